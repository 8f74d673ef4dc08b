"""Apache-2.0 evidence: the canonical text by hash, a reflowed copy by normalised match, contradictions fail."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from verify_helpers import make_manifest

from m7b.verify.check import verify_release
from m7b.verify.findings import Status
from m7b.verify.license import CANONICAL_SHA256, CANONICAL_SIZE, Evidence, canonical_text, classify, find_evidence


def test_shipped_canonical_text_is_byte_exact() -> None:
    text = canonical_text()
    assert len(text) == CANONICAL_SIZE == 11358
    assert hashlib.sha256(text).hexdigest() == CANONICAL_SHA256


def test_shipped_text_is_package_data() -> None:
    assert '"m7b.verify" = ["Apache-2.0.txt"]' in (Path(__file__).parents[2] / "pyproject.toml").read_text()


def test_kinds_of_evidence() -> None:
    text = canonical_text()
    assert [k for k, _ in classify(text)] == [Evidence.CANONICAL]
    assert [k for k, _ in classify(b"Released by us.\n\n" + text)] == [Evidence.CANONICAL]
    reflowed = b" ".join(text.replace(b"http://", b"https://").split()).replace(b'"', b"\xe2\x80\x9c")
    assert [k for k, _ in classify(reflowed.upper())] == [Evidence.NORMALISED]
    without_appendix = text[: text.index(b"END OF TERMS AND CONDITIONS") + 30]
    assert [k for k, _ in classify(without_appendix)] == [Evidence.NORMALISED]
    assert [k for k, _ in classify(b"license: Apache-2.0\n")] == [Evidence.MENTION]
    truncated = text[: len(text) // 2]
    assert Evidence.NORMALISED not in [k for k, _ in classify(truncated)]
    assert Evidence.CONTRADICTION in [k for k, _ in classify(b"license: CC-BY-NC-4.0\n")]
    assert Evidence.CONTRADICTION in [k for k, _ in classify(b"For non-commercial use only.\n")]


def test_license_file_is_found_and_reported_where(tiny_release: Path) -> None:
    (tiny_release / "LICENSE").write_bytes(canonical_text())
    evidence = find_evidence(tiny_release)
    assert {(e.path, e.kind) for e in evidence} == {("LICENSE", Evidence.CANONICAL), ("RELEASE", Evidence.MENTION)}


@pytest.mark.slow
def test_contradicting_evidence_fails(tiny_release: Path) -> None:
    (tiny_release / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, ...\n")
    report = verify_release(tiny_release, make_manifest(tiny_release, "tiny", None))
    assert report.verdict == Status.MISMATCH
    assert any(f.check == "license" and f.path == "LICENSE" and "MIT" in f.message for f in report.failures())


@pytest.mark.slow
def test_manifest_license_must_be_apache(tiny_release: Path) -> None:
    report = verify_release(tiny_release, make_manifest(tiny_release, "tiny", None, license_id="MIT"))
    assert any(f.check == "license" and f.status == Status.MISMATCH and "'MIT'" in f.message for f in report.findings)
