"""Hostile signatures and keys (issue 20, item 6): each is a clear error with its exit code, read within bounds
(the file's size, the number of files a statement lists), never a crash."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from m7b.errors import InvalidInputError, M7bError, MismatchError, NotFoundError, UnsafeError
from m7b.verify.findings import Status
from m7b.verify.signature import (
    MAX_SIGNATURE_BYTES,
    PublicKey,
    check_envelope,
    check_files,
    fingerprint,
    load_public_key,
    load_signing_key,
    pae,
    parse_signature,
    read_signature,
    sign_files,
    sign_payload,
)

DIGESTS = {"a.bin": hashlib.sha256(b"a").hexdigest(), "sub/b.bin": hashlib.sha256(b"b").hexdigest()}


@pytest.fixture(scope="module")
def private() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def public(private: ec.EllipticCurvePrivateKey) -> PublicKey:
    return PublicKey(private.public_key(), fingerprint(private.public_key()), "test")


def _bundle(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def _with_statement(doc: dict[str, Any], private: ec.EllipticCurvePrivateKey) -> bytes:
    """A correctly signed bundle over an arbitrary statement (a hostile signer's)."""
    return sign_payload(json.dumps(doc).encode(), private)


def _statement(resources: list[dict[str, Any]]) -> dict[str, Any]:
    hexes = [r["digest"] for r in resources if isinstance(r["digest"], str) and len(r["digest"]) == 64]
    root = hashlib.sha256(b"".join(bytes.fromhex(h) for h in hexes)).hexdigest()
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "m", "digest": {"sha256": root}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {"serialization": {"method": "files", "hash_type": "sha256"}, "resources": resources},
    }


def test_a_truncated_signature_is_invalid_input(private: ec.EllipticCurvePrivateKey) -> None:
    data = sign_files("m", DIGESTS, private)
    for cut in (0, 1, len(data) // 2, len(data) - 3):
        with pytest.raises(InvalidInputError, match="not an OMS signature"):
            parse_signature(data[:cut], "x.sig")


def test_a_huge_signature_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.sig"
    with open(path, "wb") as fh:
        fh.truncate(MAX_SIGNATURE_BYTES + 10)
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="more than a signature holds"):
        read_signature(path)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: b.update(dsseEnvelope=[]),
        lambda b: b.update(mediaType=7),
        lambda b: b["dsseEnvelope"].update(signatures="x"),
        lambda b: b["dsseEnvelope"].update(signatures=[]),
        lambda b: b["dsseEnvelope"].update(payload=12),
        lambda b: b["dsseEnvelope"].update(payload="!!not base64!!"),
        lambda b: b["dsseEnvelope"].update(payloadType="text/plain"),
        lambda b: b["verificationMaterial"].update(publicKey={"hint": "../../etc"}),
        lambda b: b.update(verificationMaterial=None),
    ],
)
def test_wrong_json_types_are_invalid_input(private: ec.EllipticCurvePrivateKey, mutate: Any) -> None:
    bundle = _bundle(sign_files("m", DIGESTS, private))
    mutate(bundle)
    with pytest.raises(InvalidInputError):
        parse_signature(json.dumps(bundle).encode(), "x.sig")


@pytest.mark.parametrize(
    "payload",
    [
        b"[1, 2, 3]",
        b"not json",
        json.dumps({"_type": "https://in-toto.io/Statement/v0.1"}).encode(),
        json.dumps(_statement([]) | {"predicateType": "https://slsa.dev/provenance/v1"}).encode(),
        json.dumps(_statement([]) | {"subject": []}).encode(),
        json.dumps(_statement([{"name": "a", "algorithm": "md5", "digest": "0" * 64}])).encode(),
        json.dumps(_statement([{"name": "a", "algorithm": "sha256", "digest": 5}])).encode(),
        json.dumps(
            _statement([]) | {"predicate": {"serialization": {"method": "shards", "hash_type": "sha256"}}}
        ).encode(),
    ],
)
def test_a_payload_that_is_not_the_oms_statement_is_invalid_input(
    private: ec.EllipticCurvePrivateKey, payload: bytes
) -> None:
    with pytest.raises(InvalidInputError, match="not an OMS signature"):
        parse_signature(sign_payload(payload, private), "x.sig")


def test_a_subject_digest_that_is_not_the_files_is_invalid_input(private: ec.EllipticCurvePrivateKey) -> None:
    doc = _statement([{"name": "a", "algorithm": "sha256", "digest": "1" * 64}])
    doc["subject"][0]["digest"]["sha256"] = "2" * 64
    with pytest.raises(InvalidInputError, match="subject's digest"):
        parse_signature(_with_statement(doc, private), "x.sig")


@pytest.mark.parametrize("name", ["../outside", "/etc/passwd", "a/../../b", "a\\b", "", "a//b"])
def test_a_statement_naming_a_path_outside_the_folder_is_unsafe(private: ec.EllipticCurvePrivateKey, name: str) -> None:
    doc = _statement([{"name": name, "algorithm": "sha256", "digest": "1" * 64}])
    with pytest.raises(UnsafeError, match="do not use it"):
        parse_signature(_with_statement(doc, private), "x.sig")


@pytest.mark.slow
def test_a_statement_of_a_million_files_is_refused_quickly(private: ec.EllipticCurvePrivateKey) -> None:
    entry = {"name": "f", "algorithm": "sha256", "digest": "0" * 64}
    doc = _statement([])
    doc["predicate"]["resources"] = [entry] * 1_000_000
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="more than a signature holds"):  # 155 MB: refused by its size
        parse_signature(_with_statement(doc, private), "x.sig")
    doc["predicate"]["resources"] = [{}] * 1_000_000  # compact enough to fit: refused by the count, unread
    data = sign_payload(json.dumps(doc, separators=(",", ":")).encode(), private)
    assert len(data) < MAX_SIGNATURE_BYTES
    started = time.monotonic()
    with pytest.raises(InvalidInputError, match="lists 1,000,000 files, over the 10,000"):
        parse_signature(data, "x.sig")
    assert time.monotonic() - started < 5


def test_a_changed_statement_under_the_named_key_is_a_mismatch(
    private: ec.EllipticCurvePrivateKey, public: PublicKey
) -> None:
    bundle = _bundle(sign_files("m", DIGESTS, private))
    other = sign_files("m", {"a.bin": "0" * 64}, private)
    bundle["dsseEnvelope"]["payload"] = _bundle(other)["dsseEnvelope"]["payload"]  # the old signature kept
    with pytest.raises(MismatchError, match="not over its statement"):
        check_envelope(parse_signature(json.dumps(bundle).encode(), "x.sig"), [public])


def test_a_valid_signature_by_an_unknown_key_is_unsafe(public: PublicKey) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    signed = parse_signature(sign_files("m", DIGESTS, stranger), "x.sig")
    with pytest.raises(UnsafeError, match="does not name"):
        check_envelope(signed, [public])
    with pytest.raises(UnsafeError):
        check_envelope(signed, [])


def test_a_forged_hint_does_not_make_a_stranger_the_publisher(public: PublicKey) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    bundle = _bundle(sign_files("m", DIGESTS, stranger))
    bundle["verificationMaterial"]["publicKey"]["hint"] = public.fingerprint
    with pytest.raises(MismatchError):
        check_envelope(parse_signature(json.dumps(bundle).encode(), "x.sig"), [public])


def test_check_files_turns_each_hostile_signature_into_a_finding(tmp_path: Path, public: PublicKey) -> None:
    cases = {b"": Status.INVALID, b"{}": Status.INVALID, b"\xff\xfe": Status.INVALID}
    for i, (data, status) in enumerate(cases.items()):
        path = tmp_path / f"{i}.sig"
        path.write_bytes(data)
        checked = check_files(path, DIGESTS, [public])
        assert checked.finding.status == status and checked.verdict == "invalid"
    gone = check_files(tmp_path / "absent.sig", DIGESTS, [public])
    assert gone.finding.status == Status.MISSING


def _pem_private(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key: Any) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "p192"])
def test_a_key_that_is_not_an_oms_ec_key_is_invalid_input(tmp_path: Path, kind: str) -> None:
    key: Any = {
        "rsa": lambda: rsa.generate_private_key(65537, 2048),
        "ed25519": ed25519.Ed25519PrivateKey.generate,
        "p192": lambda: ec.generate_private_key(ec.SECP192R1()),
    }[kind]()
    (tmp_path / "k.pem").write_bytes(_pem_private(key))
    (tmp_path / "k.pub").write_bytes(_pem_public(key.public_key()))
    with pytest.raises(InvalidInputError, match="P-256"):
        load_signing_key(tmp_path / "k.pem")
    with pytest.raises(InvalidInputError, match="P-256"):
        load_public_key(tmp_path / "k.pub")


@pytest.mark.parametrize(
    "data", [b"", b"hello", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", b"\x00" * 100]
)
def test_a_key_file_that_is_not_a_key_is_invalid_input(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "k.pem").write_bytes(data)
    for load in (load_signing_key, load_public_key):
        with pytest.raises(InvalidInputError):
            load(tmp_path / "k.pem")


def test_a_missing_or_huge_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        load_signing_key(tmp_path / "absent.pem")
    (tmp_path / "big.pem").write_bytes(b"A" * (1 << 20))
    with pytest.raises(InvalidInputError, match="a PEM key is a few hundred"):
        load_public_key(tmp_path / "big.pem")


def test_the_pae_is_dsse_v1(private: ec.EllipticCurvePrivateKey) -> None:
    assert pae(b"{}") == b"DSSEv1 28 application/vnd.in-toto+json 2 {}"
    bundle = _bundle(sign_files("m", DIGESTS, private))
    assert base64.b64decode(bundle["dsseEnvelope"]["payload"]).startswith(b"{")


def test_every_error_is_an_m7b_error_with_an_exit_code() -> None:
    for cls in (InvalidInputError, MismatchError, UnsafeError, NotFoundError):
        assert issubclass(cls, M7bError) and cls.exit_code in (3, 4, 5, 6)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl binary")
@pytest.mark.parametrize("curve", ["prime256v1", "secp384r1"])
def test_a_key_as_openssl_ecparam_writes_it_signs(tmp_path: Path, curve: str) -> None:
    key = tmp_path / "k.pem"
    subprocess.run(["openssl", "ecparam", "-genkey", "-name", curve, "-noout", "-out", str(key)], check=True)
    subprocess.run(["openssl", "ec", "-in", str(key), "-pubout", "-out", str(tmp_path / "k.pub")], check=True,
                   capture_output=True)  # fmt: skip
    signed = parse_signature(sign_files("m", DIGESTS, load_signing_key(key)), "x.sig")
    assert check_envelope(signed, [load_public_key(tmp_path / "k.pub")]).fingerprint == signed.hint


def test_each_verdict_from_the_digests_of_one_read(
    tmp_path: Path, private: ec.EllipticCurvePrivateKey, public: PublicKey
) -> None:
    path = tmp_path / "m.sig"
    path.write_bytes(sign_files("m", DIGESTS, private))
    signed = check_files(path, DIGESTS, [public])
    assert signed.verdict == "signed" and signed.signer == public.fingerprint
    assert signed.covered == ("a.bin", "sub/b.bin") and signed.finding.status == Status.OK
    changed = check_files(path, DIGESTS | {"a.bin": "0" * 64}, [public])
    assert changed.verdict == "mismatch" and changed.finding.message.startswith("signature does not match a.bin")
    added = check_files(path, DIGESTS | {"c.bin": "0" * 64}, [public])
    assert (
        added.finding.status == Status.MISMATCH
        and "c.bin: in the folder, but the signature does not cover" in added.finding.message
    )
    stranger = PublicKey(ec.generate_private_key(ec.SECP256R1()).public_key(), "0" * 64, "other")
    unknown = check_files(path, DIGESTS, [stranger])
    assert unknown.verdict == "unknown-key" and unknown.finding.status == Status.UNSAFE
    assert "a key this release does not name" in unknown.finding.message
    assert check_files(None, DIGESTS, [public]).finding.status == Status.NOTE
    assert check_files(None, DIGESTS, [public], require=True).finding.status == Status.MISSING
