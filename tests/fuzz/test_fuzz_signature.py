"""Property-based fuzzing of the OMS signature reader and the key readers (issue 20): whatever the bytes, only an
M7bError with its exit code escapes (InvalidInputError, UnsafeError for a path outside the folder, MismatchError
for a statement its signer's key did not sign), and a signature's verdict is a finding, never a crash. Budget: the
`ci` profile (tests/conftest.py)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given
from hypothesis import strategies as st

from m7b.errors import InvalidInputError, MismatchError, UnsafeError
from m7b.manifests.loader import parse_manifest
from m7b.paths import path_problem
from m7b.verify.signature import (
    PublicKey,
    check_envelope,
    check_files,
    fingerprint,
    parse_signature,
    public_key_from_pem,
    sign_files,
    sign_payload,
)

KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = PublicKey(KEY.public_key(), fingerprint(KEY.public_key()), "fuzz")
GOOD = sign_files("m", {"a.bin": hashlib.sha256(b"a").hexdigest()}, KEY)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


@given(st.binary(max_size=4096))
@example(GOOD)
@example(GOOD[:-10])
@example(b"{" * 100_000)
def test_any_bytes_are_a_signature_or_invalid_input(data: bytes) -> None:
    with contextlib.suppress(InvalidInputError, UnsafeError):
        parse_signature(data, "fuzz.sig")


@given(st.data())
def test_any_json_in_any_field_of_a_bundle_is_read_or_refused(data: st.DataObject) -> None:
    bundle: dict[str, Any] = json.loads(GOOD)
    where = data.draw(st.sampled_from(["mediaType", "verificationMaterial", "dsseEnvelope", "payloadType", "sig"]))
    value = data.draw(JSON)
    if where == "payloadType":
        bundle["dsseEnvelope"]["payloadType"] = value
    elif where == "sig":
        bundle["dsseEnvelope"]["signatures"][0]["sig"] = value
    else:
        bundle[where] = value
    with contextlib.suppress(InvalidInputError, UnsafeError, MismatchError):
        check_envelope(parse_signature(json.dumps(bundle).encode(), "fuzz.sig"), [PUBLIC])


@given(JSON)
def test_any_signed_payload_is_a_statement_or_refused(doc: object) -> None:
    with contextlib.suppress(InvalidInputError, UnsafeError):
        parse_signature(sign_payload(json.dumps(doc).encode(), KEY), "fuzz.sig")


@given(st.lists(st.tuples(st.text(max_size=30), st.binary(min_size=1, max_size=8)), max_size=8))
def test_any_resource_names_in_a_signed_statement_stay_inside_the_folder(entries: list[tuple[str, bytes]]) -> None:
    resources = [
        {"name": name, "algorithm": "sha256", "digest": hashlib.sha256(blob).hexdigest()} for name, blob in entries
    ]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    doc = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "m", "digest": {"sha256": root}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {"serialization": {"method": "files", "hash_type": "sha256"}, "resources": resources},
    }
    try:
        signed = parse_signature(sign_payload(json.dumps(doc).encode(), KEY), "fuzz.sig")
    except (InvalidInputError, UnsafeError):
        return
    assert all(path_problem(rel) is None for rel in signed.resources)


@given(st.binary(max_size=2048))
@example(b"-----BEGIN PUBLIC KEY-----\n" + base64.b64encode(b"\x30" * 91) + b"\n-----END PUBLIC KEY-----\n")
def test_any_bytes_are_a_public_key_or_invalid_input(data: bytes) -> None:
    with contextlib.suppress(InvalidInputError):
        public_key_from_pem(data, "fuzz.pub")


@given(st.binary(max_size=2048))
def test_check_files_never_raises_whatever_the_signature_file_holds(data: bytes) -> None:
    path = Path(f"/tmp/m7b-fuzz-sig-{hashlib.sha256(data).hexdigest()[:12]}.sig")
    path.write_bytes(data)
    try:
        checked = check_files(path, {"a.bin": "0" * 64}, [PUBLIC])
    finally:
        path.unlink()
    assert checked.verdict in ("invalid", "mismatch", "unknown-key", "signed")


@given(st.lists(JSON, max_size=4) | JSON)
def test_any_signing_table_in_a_manifest_loads_or_is_invalid_input(keys: object) -> None:
    raw = {"schema": 1, "name": "x", "title": "x", "publisher": "x", "license": "Apache-2.0"}
    raw |= {"signing": {"keys": keys}, "sources": {"release": "r", "signing": "s"}}
    with contextlib.suppress(InvalidInputError):
        parse_manifest(raw, "fuzz.toml")


@pytest.mark.parametrize("keys", [["sha256:" + "0" * 63], ["-----BEGIN RSA PUBLIC KEY-----\nAA\n"], [""], "x"])
def test_a_signing_key_that_is_not_a_pem_or_fingerprint_is_invalid_input(keys: object) -> None:
    raw = {"schema": 1, "name": "x", "title": "x", "publisher": "x", "license": "Apache-2.0"}
    raw |= {"signing": {"keys": keys}, "sources": {"release": "r", "signing": "s"}}
    with pytest.raises(InvalidInputError, match="signing"):
        parse_manifest(raw, "fuzz.toml")
