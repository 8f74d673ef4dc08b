"""Mirrors can insist (issue 20, item 4): `seed --require-signature` refuses a release whose OMS signature is
missing or does not verify against its manifest's keys; the status page and /metrics name the signer."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

sys.path.insert(0, str(Path(__file__).parents[1] / "verify"))
from signing_helpers import make_key, publish  # noqa: E402

from m7b.errors import MismatchError, NotFoundError, UnsafeError  # noqa: E402
from m7b.mirror.seed import ReleaseStatus, seed_releases  # noqa: E402
from m7b.mirror.status import StatusBoard, render_html, status_registry  # noqa: E402
from m7b.store import Store  # noqa: E402
from m7b.verify.signature import fingerprint, load_signing_key, read_signature, sign_files  # noqa: E402


@pytest.mark.slow
def test_require_signature_serves_a_signed_release_and_names_its_signer(
    tiny_release: Path, tmp_path: Path, m7b_home: Path
) -> None:
    key = make_key(tmp_path / "k.pem")
    publish(tiny_release, key)
    [seed] = seed_releases([str(tiny_release)], Store(m7b_home), require_signature=True)
    assert seed.signer == fingerprint(load_signing_key(key).public_key())
    board = StatusBoard(6881)
    board.update([ReleaseStatus(seed.name, seed.meta.info_hash, "seeding", signer=seed.signer)])
    assert f"sha256:{seed.signer}" in render_html(board.document())
    metrics = generate_latest(status_registry(board)).decode()
    assert f'm7b_seed_signed{{release="{seed.name}",signer="sha256:{seed.signer}"}} 1.0' in metrics


@pytest.mark.slow
def test_require_signature_refuses_unsigned_tampered_and_strangers_signatures(
    tiny_release: Path, tmp_path: Path, m7b_home: Path
) -> None:
    publish(tiny_release, None)
    store = Store(m7b_home)
    assert seed_releases([str(tiny_release)], store)[0].signer is None  # not required: served as before
    with pytest.raises(NotFoundError, match="a signature is required"):
        seed_releases([str(tiny_release)], store, require_signature=True)
    key, stranger = make_key(tmp_path / "k.pem"), make_key(tmp_path / "s.pem")
    publish(tiny_release, key)
    sig = tiny_release.parent / f"{tiny_release.name}.sig"
    covered = read_signature(sig).resources
    sig.write_bytes(sign_files(tiny_release.name, covered, load_signing_key(stranger)))
    with pytest.raises(UnsafeError, match="does not name"):
        seed_releases([str(tiny_release)], store, require_signature=True)
    sig.write_bytes(sign_files(tiny_release.name, covered | {"params.json": "0" * 64}, load_signing_key(key)))
    with pytest.raises(MismatchError, match="signature does not match params.json"):
        seed_releases([str(tiny_release)], store, require_signature=True)
