"""A converted folder's provenance: an in-toto statement beside its `SHA256SUMS` saying what it was converted from
(the torrent release's info-hash, the verified checkpoint's sha256, the verify verdict), by which m7b, to which
layout, with every output's sha256 — and, with a signing key, an OMS signature over the whole folder carrying that
provenance, so that the proof follows the folder out of the store (`verify` of a copy checks it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from m7b import __version__
from m7b.atomic import write_bytes
from m7b.errors import InvalidInputError, M7bError
from m7b.store import CONVERTED_RECORD

from .signature import PROVENANCE_KEY, STATEMENT_TYPE, read_signature, sign_files

PROVENANCE_FILE = "provenance.json"
CONVERTED_SIGNATURE = "provenance.sig"
PROVENANCE_TYPE = "https://m7b.dev/conversion/v1"
MAX_PROVENANCE = 1 << 20
# a converted folder's files that SHA256SUMS does not list: the provenance is covered by the signature instead
NOT_IN_SUMS = (PROVENANCE_FILE, CONVERTED_SIGNATURE)


@dataclass(frozen=True)
class Source:
    """The release a conversion read: its name, info-hash, the checkpoint's sha256 and the last verify verdict."""

    name: str | None
    info_hash: str | None
    checkpoint_sha256: str
    verdict: str | None  # the passing verify report's verdict, or None when no report covers the source

    def to_json(self) -> dict[str, Any]:
        return {
            "release": self.name,
            "info_hash": self.info_hash,
            "checkpoint_sha256": self.checkpoint_sha256,
            "verify_verdict": self.verdict,
        }


def provenance_predicate(source: Source, layout: str) -> dict[str, Any]:
    return {"source": source.to_json(), "converter": {"name": "m7b", "version": __version__}, "layout": layout}


def provenance_statement(files: Mapping[str, str], predicate: Mapping[str, Any]) -> bytes:
    """The in-toto Statement v1 of a conversion: every output file (with its sha256) a subject."""
    doc = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": p, "digest": {"sha256": files[p]}} for p in sorted(files)],
        "predicateType": PROVENANCE_TYPE,
        "predicate": dict(predicate),
    }
    return (json.dumps(doc, indent=2) + "\n").encode()


def write_provenance(
    out: Path,
    name: str,
    files: Mapping[str, str],
    source: Source,
    layout: str,
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[Path, Path | None]:
    """Write `provenance.json` into the converted folder `out` (and, with `key`, `provenance.sig`: OMS over every
    file of the folder — outputs, SHA256SUMS, provenance.json — with the provenance in its predicate)."""
    predicate = provenance_predicate(source, layout)
    data = provenance_statement(files, predicate)
    write_bytes(out / PROVENANCE_FILE, data)
    if key is None:
        return out / PROVENANCE_FILE, None
    sums_sha256 = hashlib.sha256((out / CONVERTED_RECORD).read_bytes()).hexdigest()  # a few hundred bytes
    covered = dict(files) | {CONVERTED_RECORD: sums_sha256, PROVENANCE_FILE: hashlib.sha256(data).hexdigest()}
    sig = sign_files(name, covered, key, {PROVENANCE_KEY: predicate}, ignore_paths=[CONVERTED_SIGNATURE])
    write_bytes(out / CONVERTED_SIGNATURE, sig)
    return out / PROVENANCE_FILE, out / CONVERTED_SIGNATURE


def signed_source(predicate: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `source` of the provenance a signature's predicate carries (None when it carries none), checked for
    shape: outside data."""
    prov = predicate.get(PROVENANCE_KEY)
    if prov is None:
        return None
    source = prov.get("source") if isinstance(prov, dict) else None
    if not isinstance(source, dict):
        raise InvalidInputError("the signature's provenance has no `source` object")
    for key in ("release", "info_hash", "checkpoint_sha256", "verify_verdict"):
        value = source.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > 256):
            raise InvalidInputError(f"the signature's provenance: source.{key} is not a short string")
    out = dict(source)
    out["layout"] = prov.get("layout") if isinstance(prov.get("layout"), str) else None
    return out


def provenance_release(folder: Path) -> str | None:
    """The release name a converted folder's provenance.json claims it came from (None without one)."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        if not path.is_file() or path.stat().st_size > MAX_PROVENANCE:
            return None
        name = json.loads(path.read_bytes())["predicate"]["source"]["release"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


def provenance_line(folder: Path) -> str | None:
    """One line on what a converted folder says it came from, for `m7b run` (None when it holds no provenance):
    what provenance.json claims and who signed provenance.sig — claims until `m7b verify FOLDER` proves them (run
    does not hash the weights a second time)."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file() or path.stat().st_size > MAX_PROVENANCE:
        return None
    try:
        doc = json.loads(path.read_bytes())
        source = doc["predicate"]["source"]
        release, info_hash = str(source.get("release") or "?")[:100], str(source.get("info_hash") or "?")[:64]
        checkpoint = str(source.get("checkpoint_sha256"))[:64]
        said = f"converted from release {release} (info-hash {info_hash}, checkpoint sha256 {checkpoint})"
    except (ValueError, KeyError, TypeError, AttributeError):
        return f"{path} is not a provenance statement m7b wrote; `m7b verify {folder}` says what the folder is"
    sig = Path(folder) / CONVERTED_SIGNATURE
    signer = "unsigned"
    if sig.is_file():
        try:
            hint = read_signature(sig).hint
            signer = f"signed by sha256:{hint}" if hint else "signed by an unnamed key"
        except M7bError as exc:
            signer = f"its signature is unusable ({str(exc)[:200]})"
    return f"{said}, {signer}; `m7b verify {folder}` (with --public-key KEY) proves it"
