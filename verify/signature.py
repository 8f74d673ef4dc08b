"""OpenSSF Model Signing (OMS) signatures, key-based and offline: a Sigstore bundle holding a DSSE envelope over an
in-toto Statement v1 whose predicate (`https://model_signing/signature/v1.0`, the `files` serialization) lists every
file with its sha256 — the format `model_signing sign key` writes and `model_signing verify key` checks.

m7b reads and writes the bundle itself (JSON and `cryptography`), so that verifying a signature costs no second read
of the files: the statement's digests are compared with the sha256 that verify's one read computed. A signature file
is outside data: it is read within bounds (`MAX_SIGNATURE_BYTES`, `MAX_RESOURCES`), every resource name passes the
one path rule, and every failure is an M7bError with its exit code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m7b.errors import InvalidInputError, MismatchError, NotFoundError, UnsafeError
from m7b.paths import path_problem

from .findings import Finding, Status, status_for

SIGNATURE_SUFFIX = ".sig"
PASSPHRASE_ENV = "M7B_SIGN_PASSPHRASE"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PROVENANCE_KEY = "m7b_provenance"  # m7b's extra predicate field (v1.0 verifiers ignore fields they do not know)
# Bounds no real signature reaches (Mistral 7B: 4 resources in 1.5 kB; an hf folder of 59 shards: 10 kB).
MAX_SIGNATURE_BYTES = 16 << 20
MAX_RESOURCES = 10_000
MAX_KEY_BYTES = 64 << 10
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
_HEX64 = re.compile(r"[0-9a-f]{64}")
_FINGERPRINT = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


@dataclass(frozen=True)
class PublicKey:
    """A public key m7b may trust: its fingerprint (sha256 of its PEM SubjectPublicKeyInfo, the key hint OMS writes in
    a bundle) and where it came from (a manifest's `[signing]`, `--public-key FILE`)."""

    key: ec.EllipticCurvePublicKey
    fingerprint: str
    source: str


@dataclass(frozen=True)
class Signature:
    """A signature file read and checked for shape, not yet for who signed it."""

    origin: str
    hint: str | None  # the signer's key fingerprint, as the bundle states it
    payload: bytes
    sig: bytes
    name: str
    resources: dict[str, str]  # file -> sha256
    predicate: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SignatureCheck:
    """What checking a signature against the files found: `signed`, `mismatch`, `unknown-key`, `invalid` or
    `unsigned`; the signer's fingerprint and the files the signature covers."""

    verdict: str
    finding: Finding
    signer: str | None = None
    signature: str | None = None
    covered: tuple[str, ...] = ()
    predicate: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "signer": self.signer,
            "signature": self.signature,
            "covered": list(self.covered),
            "message": self.finding.message,
        }


@dataclass(frozen=True)
class Trust:
    """What a verify checks a signature with: the signature file (None: none was found), the keys it trusts (the
    manifest's PEM keys and the user's), the fingerprints the manifest names without a key, and whether a signature
    is required."""

    signature: Path | None = None
    keys: tuple[PublicKey, ...] = ()
    fingerprints: tuple[str, ...] = ()
    require: bool = False

    def check(self, digests: Mapping[str, str]) -> SignatureCheck:
        return check_files(
            self.signature, digests, self.keys, require=self.require, named_by_fingerprint=self.fingerprints
        )


# ---- keys


def fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the key's PEM SubjectPublicKeyInfo, as hex: the key hint `model_signing` writes in a bundle."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def public_pem(key: ec.EllipticCurvePublicKey) -> str:
    """The key's PEM SubjectPublicKeyInfo, as a manifest's `[signing]` names it."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _ec_only(key: object, origin: str) -> None:
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        kind = type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "") or "other"
        raise InvalidInputError(
            f"{origin}: a {kind} key, but an OMS signature key is elliptic-curve (P-256, P-384 or P-521); "
            "make one with `openssl ecparam -genkey -name prime256v1 -noout -out KEY.pem`",
            field="key",
        )
    if key.curve.name not in _HASHES:
        raise InvalidInputError(
            f"{origin}: an elliptic-curve key on {key.curve.name}; OMS signs with P-256, P-384 or P-521", field="key"
        )


def _read_key_file(path: Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"key file {path} not found", field="key")
    with open(path, "rb") as fh:
        data = fh.read(MAX_KEY_BYTES + 1)
    if len(data) > MAX_KEY_BYTES:
        raise InvalidInputError(f"{path}: over {MAX_KEY_BYTES:,} bytes; a PEM key is a few hundred", field="key")
    return data


def load_signing_key(path: Path, passphrase: str | None = None) -> ec.EllipticCurvePrivateKey:
    """An EC private key from a PEM file (`openssl ecparam -genkey` writes one). An encrypted key needs `passphrase`;
    without it InvalidInputError with `needs_passphrase=True`, so that a caller can ask for it and try again."""
    data = _read_key_file(path)
    secret = passphrase.encode() if passphrase is not None else None
    try:
        key = serialization.load_pem_private_key(data, secret)
    except TypeError as exc:  # encrypted and no passphrase, or a passphrase for a key that is not encrypted
        if secret is None:
            raise InvalidInputError(
                f"{path} is encrypted: give its passphrase (on a terminal m7b asks; else set {PASSPHRASE_ENV})",
                field="passphrase",
                needs_passphrase=True,
            ) from exc
        key = serialization.load_pem_private_key(data, None)
    except ValueError as exc:
        wrong = secret is not None and b"ENCRYPTED" in data
        raise InvalidInputError(
            f"{path}: "
            + ("the passphrase does not open this key" if wrong else "not a PEM private key")
            + "; expected an EC key as `openssl ecparam -genkey -name prime256v1 -noout` writes it",
            field="passphrase" if wrong else "key",
        ) from exc
    except UnsupportedAlgorithm as exc:
        raise InvalidInputError(f"{path}: a key of a kind m7b cannot read ({exc})", field="key") from exc
    _ec_only(key, str(path))
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def public_key_from_pem(data: bytes, source: str) -> PublicKey:
    """A public key from PEM text (a public key, or a private key whose public half is taken)."""
    try:
        key: object = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm, TypeError) as exc:
        raise InvalidInputError(
            f"{source}: not a PEM public key; expected one as `openssl ec -in KEY.pem -pubout` writes it", field="key"
        ) from exc
    _ec_only(key, source)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return PublicKey(key, fingerprint(key), source)


def load_public_key(path: Path) -> PublicKey:
    return public_key_from_pem(_read_key_file(path), str(path))


def parse_fingerprint(text: str) -> str | None:
    """The hex of a `sha256:HEX` (or bare HEX) key fingerprint, or None when `text` is not one."""
    match = _FINGERPRINT.fullmatch(text.strip().lower())
    return match.group(1) if match else None


def passphrase_from_env() -> str | None:
    return os.environ.get(PASSPHRASE_ENV)


# ---- writing


def statement(
    name: str,
    digests: Mapping[str, str],
    extra: Mapping[str, Any] | None = None,
    ignore_paths: Sequence[str] = (),
) -> bytes:
    """The in-toto statement OMS signs: every file with its sha256 (sorted by name), the subject's digest the sha256
    over the files' digests in that order, and `extra` predicate fields."""
    resources = [{"algorithm": "sha256", "digest": digests[p], "name": p} for p in sorted(digests)]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    predicate: dict[str, Any] = {
        "resources": resources,
        "serialization": {
            "allow_symlinks": False,
            "hash_type": "sha256",
            "ignore_paths": list(ignore_paths),
            "method": "files",
        },
    }
    predicate.update(extra or {})
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }
    return json.dumps(doc, indent=2, sort_keys=False).encode()


def pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of an in-toto payload (what the signature signs)."""
    return b"DSSEv1 %d %s %d " % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload)) + payload


def sign_payload(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The Sigstore bundle (JSON) of a DSSE envelope over `payload`, signed by `key`: no certificate, no
    transparency-log entry, nothing from the network."""
    public = key.public_key()
    sig = key.sign(pae(payload), ec.ECDSA(_HASHES[public.curve.name]()))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": fingerprint(public)}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    return (json.dumps(bundle, indent=2) + "\n").encode()


def sign_files(
    name: str,
    digests: Mapping[str, str],
    key: ec.EllipticCurvePrivateKey,
    extra: Mapping[str, Any] | None = None,
    ignore_paths: Sequence[str] = (),
) -> bytes:
    """An OMS signature (bundle JSON) over the files `digests` names (path -> sha256)."""
    for rel, digest in digests.items():
        if path_problem(rel) is not None or not _HEX64.fullmatch(digest):
            raise InvalidInputError(f"cannot sign {rel!r}: expected a relative path and a sha256 hex digest")
    return sign_payload(statement(name, digests, extra, ignore_paths), key)


def signature_beside(folder: Path) -> Path:
    """Where a release folder's signature sits: `DIR.sig` beside `DIR` (and its `DIR.torrent`, `DIR.toml`)."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}{SIGNATURE_SUFFIX}"


# ---- reading


def _bad(origin: str, what: str) -> InvalidInputError:
    return InvalidInputError(
        f"{origin}: not an OMS signature ({what}); expected a Sigstore bundle as `model_signing sign key` or "
        "`m7b release sign` writes it",
        field="signature",
    )


def _get(doc: Any, key: str, kind: type, origin: str, where: str) -> Any:
    if not isinstance(doc, dict):
        raise _bad(origin, f"{where} is not an object")
    value = doc.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise _bad(origin, f"{where}.{key}: expected {kind.__name__}, found {type(value).__name__}")
    return value


def _b64(text: str, origin: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _bad(origin, f"{where} is not base64") from exc


def read_signature(path: Path) -> Signature:
    """Read a signature file within `MAX_SIGNATURE_BYTES`; NotFoundError when absent, InvalidInputError when it is
    not an OMS signature, UnsafeError when its statement names a path outside the folder."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"signature {path} not found", field="signature")
    with open(path, "rb") as fh:
        data = fh.read(MAX_SIGNATURE_BYTES + 1)
    return parse_signature(data, str(path))


def parse_signature(data: bytes, origin: str) -> Signature:
    if len(data) > MAX_SIGNATURE_BYTES:
        raise InvalidInputError(
            f"{origin}: over {MAX_SIGNATURE_BYTES:,} bytes, more than a signature holds; check that this is one",
            field="signature",
        )
    try:
        bundle = json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _bad(origin, "not JSON") from exc
    media = _get(bundle, "mediaType", str, origin, "bundle")
    if not media.startswith("application/vnd.dev.sigstore.bundle"):
        raise _bad(origin, f"mediaType {media[:80]!r}")
    material = _get(bundle, "verificationMaterial", dict, origin, "bundle")
    hint = material.get("publicKey", {}).get("hint") if isinstance(material.get("publicKey"), dict) else None
    if hint is not None and (not isinstance(hint, str) or not _HEX64.fullmatch(hint)):
        raise _bad(origin, "verificationMaterial.publicKey.hint is not a sha256 key fingerprint")
    envelope = _get(bundle, "dsseEnvelope", dict, origin, "bundle")
    if _get(envelope, "payloadType", str, origin, "dsseEnvelope") != PAYLOAD_TYPE:
        raise _bad(origin, f"dsseEnvelope.payloadType is not {PAYLOAD_TYPE}")
    payload = _b64(_get(envelope, "payload", str, origin, "dsseEnvelope"), origin, "dsseEnvelope.payload")
    signatures = _get(envelope, "signatures", list, origin, "dsseEnvelope")
    if len(signatures) != 1:
        raise _bad(origin, f"expected one signature in the envelope, found {len(signatures)}")
    sig = _b64(_get(signatures[0], "sig", str, origin, "signatures[0]"), origin, "signatures[0].sig")
    name, resources, predicate = parse_statement(payload, origin)
    return Signature(origin, hint, payload, sig, name, resources, predicate)


def parse_statement(payload: bytes, origin: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The model's name, its files (path -> sha256) and the predicate of an OMS in-toto statement."""
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise _bad(origin, "the signed payload is not JSON") from exc
    if _get(doc, "_type", str, origin, "statement") != STATEMENT_TYPE:
        raise _bad(origin, f"the signed payload is not an in-toto {STATEMENT_TYPE}")
    if _get(doc, "predicateType", str, origin, "statement") != PREDICATE_TYPE:
        raise _bad(origin, f"the statement's predicateType is not {PREDICATE_TYPE}")
    subjects = _get(doc, "subject", list, origin, "statement")
    if len(subjects) != 1:
        raise _bad(origin, f"expected one subject, found {len(subjects)}")
    name = _get(subjects[0], "name", str, origin, "subject[0]")
    root = _get(_get(subjects[0], "digest", dict, origin, "subject[0]"), "sha256", str, origin, "subject[0].digest")
    predicate = _get(doc, "predicate", dict, origin, "statement")
    serialization_doc = _get(predicate, "serialization", dict, origin, "predicate")
    method, hash_type = serialization_doc.get("method"), serialization_doc.get("hash_type")
    if method != "files" or hash_type != "sha256":
        raise _bad(
            origin,
            f"serialization {str(method)[:40]!r}/{str(hash_type)[:40]!r}: m7b checks the per-file sha256 "
            "serialization (`files`, sha256), the model_signing CLI's default",
        )
    items = _get(predicate, "resources", list, origin, "predicate")
    if len(items) > MAX_RESOURCES:
        raise InvalidInputError(
            f"{origin}: the statement lists {len(items):,} files, over the {MAX_RESOURCES:,} m7b reads; "
            "no real release has more",
            field="signature",
        )
    resources: dict[str, str] = {}
    rolling = hashlib.sha256()
    for i, item in enumerate(items):
        rel = _get(item, "name", str, origin, f"resources[{i}]")
        digest = _get(item, "digest", str, origin, f"resources[{i}]")
        if _get(item, "algorithm", str, origin, f"resources[{i}]") != "sha256" or not _HEX64.fullmatch(digest):
            raise _bad(origin, f"resources[{i}] is not a sha256 hex digest")
        problem = path_problem(rel)
        if problem is not None:
            raise UnsafeError(
                f"{origin}: the statement names {rel[:200]!r}, which {problem}; a signature names files inside "
                "the folder only — this one was made to point elsewhere: do not use it",
                field="signature",
            )
        if rel in resources:
            raise _bad(origin, f"{rel[:200]!r} is listed twice")
        resources[rel] = digest
        rolling.update(bytes.fromhex(digest))
    if rolling.hexdigest() != root:
        raise _bad(origin, "the subject's digest is not the digest of the files listed")
    return name, resources, predicate


def check_envelope(signed: Signature, keys: Sequence[PublicKey]) -> PublicKey:
    """The key among `keys` that made this signature. UnsafeError when none of them is its signer (a key this
    release does not name), MismatchError when the signer's key is named but the signature is not over this
    statement."""
    candidates = [k for k in keys if signed.hint is None or k.fingerprint == signed.hint]
    for key in candidates:
        try:
            key.key.verify(signed.sig, pae(signed.payload), ec.ECDSA(_HASHES[key.key.curve.name]()))
            return key
        except InvalidSignature:
            continue
    if candidates and signed.hint is not None:
        raise MismatchError(
            f"{signed.origin}: the signature is not over its statement for key sha256:{signed.hint} (the statement "
            "was changed after signing, or the signature damaged): get the signature again from the publisher",
            field="signature",
        )
    who = f"sha256:{signed.hint}" if signed.hint else "an unnamed key"
    named = ", ".join(f"sha256:{k.fingerprint}" for k in keys) or "none"
    raise UnsafeError(
        f"{signed.origin}: signed by {who}, a key this release does not name (it names {named}); "
        "if you trust that key, give it (public_key)",
        field="public_key",
        signer=signed.hint,
    )


def differences(resources: Mapping[str, str], digests: Mapping[str, str]) -> list[str]:
    """How the files differ from what a signature covers: changed, missing and unsigned files (sorted)."""
    out = [
        f"{p}: sha256 {digests[p]}, signed {resources[p]}"
        for p in sorted(resources)
        if p in digests and digests[p] != resources[p]
    ]
    out += [f"{p}: signed, but not in the folder" for p in sorted(set(resources) - set(digests))]
    out += [f"{p}: in the folder, but the signature does not cover it" for p in sorted(set(digests) - set(resources))]
    return out


def check_files(
    path: Path | None,
    digests: Mapping[str, str],
    keys: Sequence[PublicKey],
    *,
    require: bool = False,
    named_by_fingerprint: Sequence[str] = (),
) -> SignatureCheck:
    """The signature verdict for files whose sha256 `digests` holds (from the caller's one read): the signature at
    `path` (None: there is none) checked against `keys`. Never raises for what it finds."""
    if path is None:
        status = Status.MISSING if require else Status.NOTE
        why = "a signature is required (require_signature)" if require else "nothing checks who published these files"
        return SignatureCheck("unsigned", Finding("signature", status, f"unsigned: no signature found; {why}"))
    try:
        signed = read_signature(path)
        key = check_envelope(signed, keys)
    except OSError as exc:  # an unreadable file (permissions, I/O): the signature cannot be checked
        why = f"{path}: cannot be read ({exc.strerror or exc}); make it readable or pass another (signature)"
        return SignatureCheck("invalid", Finding("signature", Status.INVALID, why), signature=str(path))
    except (InvalidInputError, MismatchError, UnsafeError, NotFoundError) as exc:
        hint = exc.data.get("signer")
        if isinstance(exc, UnsafeError) and hint in named_by_fingerprint:
            msg = (
                f"{path}: signed by sha256:{hint}, which the manifest names by fingerprint only: give its public key "
                "(public_key) to check the signature"
            )
            return SignatureCheck("unknown-key", Finding("signature", Status.MISSING, msg), signature=str(path))
        status = status_for(exc)  # the one table of error <-> status (verify/findings.py)
        # unsafe with a signer: a key nobody named; unsafe without (a path outside the folder): no usable signature
        verdict = "mismatch" if status == Status.MISMATCH else "unknown-key" if "signer" in exc.data else "invalid"
        return SignatureCheck(
            verdict,
            Finding("signature", status, str(exc)),
            signer=hint if isinstance(hint, str) else None,
            signature=str(path),
        )
    covered = tuple(sorted(signed.resources))
    diffs = differences(signed.resources, digests)
    if diffs:
        first = diffs[0].split(":", 1)[0]
        return SignatureCheck(
            "mismatch",
            Finding(
                "signature",
                Status.MISMATCH,
                f"signature does not match {first}: "
                + "; ".join(diffs[:10])
                + (f"; and {len(diffs) - 10} more" if len(diffs) > 10 else "")
                + f" (signed by sha256:{key.fingerprint}) — fetch or convert it again",
                first,
                {"differences": diffs[:1000]},
            ),
            key.fingerprint,
            str(path),
            covered,
            signed.predicate,
        )
    return SignatureCheck(
        "signed",
        Finding(
            "signature",
            Status.OK,
            f"signed by sha256:{key.fingerprint} ({key.source}): all {len(covered)} files match the signature",
            detail={"signer": key.fingerprint, "signature": str(path)},
        ),
        key.fingerprint,
        str(path),
        covered,
        signed.predicate,
    )
