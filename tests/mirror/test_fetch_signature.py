"""`m7b fetch` keeps a release's signature with its torrent (issue 20): from `--signature`, or a .sig beside the
.torrent; `verify` then finds the store's copy. A hostile signature is refused before any data is fetched."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from swarm import plain_seeder

sys.path.insert(0, str(Path(__file__).parents[1] / "verify"))
from signing_helpers import make_key  # noqa: E402

from m7b.errors import InvalidInputError, UnsafeError  # noqa: E402
from m7b.manifests.writer import manifest_to_toml  # noqa: E402
from m7b.mirror.create import create_release  # noqa: E402
from m7b.mirror.fetch import fetch_release  # noqa: E402
from m7b.mirror.session import session_options  # noqa: E402
from m7b.store import Store  # noqa: E402
from m7b.verify.findings import Status  # noqa: E402
from m7b.verify.release import verify  # noqa: E402
from m7b.verify.signature import load_signing_key  # noqa: E402


@pytest.mark.slow
def test_fetch_keeps_the_signature_beside_the_torrent_and_verify_finds_it(
    m7b_home: Path, tiny_release: Path, tmp_path: Path
) -> None:
    key = make_key(tmp_path / "k.pem")
    made = create_release(tiny_release, manifest_name="tiny-test", sign_key=load_signing_key(key))
    torrent = tiny_release.parent / f"{tiny_release.name}.torrent"
    torrent.write_bytes(made.torrent)
    assert made.signature is not None
    torrent.with_suffix(".sig").write_bytes(made.signature)
    (m7b_home / "manifests").mkdir(parents=True)
    (m7b_home / "manifests" / "tiny-test.toml").write_text(manifest_to_toml(made.manifest))
    store = Store(m7b_home)
    with plain_seeder(torrent, tiny_release) as peer:
        result = fetch_release(str(torrent), store=store, options=session_options(loopback=True), peers=[peer])
    kept = store.signature_path(result.info_hash)
    assert kept.read_bytes() == made.signature
    report = verify("tiny-test", store).report
    assert report.verdict == Status.OK
    assert report.to_json()["signature"]["signature"] == str(kept)


def test_fetch_refuses_a_hostile_signature_before_any_data(m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    made = create_release(tiny_release, manifest_name="tiny-test")
    torrent = tmp_path / "t.torrent"
    torrent.write_bytes(made.torrent)
    bad = tmp_path / "bad.sig"
    bad.write_text('{"mediaType": 5}')
    with pytest.raises(InvalidInputError, match="not an OMS signature"):
        fetch_release(str(torrent), store=Store(m7b_home), dest=tmp_path / "d", signature=bad, timeout=1)
    assert not (tmp_path / "d").exists()
    shutil.copy(bad, tmp_path / "t.sig")
    with pytest.raises((InvalidInputError, UnsafeError)):
        fetch_release(str(torrent), store=Store(m7b_home), dest=tmp_path / "d", timeout=1)


def test_rm_removes_the_signature_with_the_torrent(m7b_home: Path, tiny_release_src: Path) -> None:
    from verify_helpers import install_release

    from m7b.remove import plan_removal

    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    [torrent] = list(store.torrents_dir.glob("*.torrent"))
    sig = torrent.with_suffix(".sig")
    sig.write_bytes(b"{}")
    assert sig in [part.path for part in plan_removal(store, "tiny-test").remove]
