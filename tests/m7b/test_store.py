from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from m7b.manifests.loader import BUNDLED_DIR
from m7b.store import Store


def states(cli) -> dict[str, str]:
    result = cli("list", "--json")
    assert result.code == 0, result.stderr
    return {r["name"]: r["state"] for r in json.loads(result.stdout)["releases"]}


@pytest.fixture
def tiny_manifest(m7b_home: Path, tiny_release_src: Path) -> str:
    """A manifest in the store naming the tiny release's four files (tokenizer with its real size)."""
    (m7b_home / "manifests").mkdir(parents=True)
    text = (BUNDLED_DIR / "mistral-7b-v0.1.toml").read_text().replace('name = "mistral-7b-v0.1"', 'name = "tiny"')
    (m7b_home / "manifests" / "tiny.toml").write_text(text)
    return "tiny"


def test_home_comes_from_m7b_home_then_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("M7B_HOME", str(tmp_path / "h"))
    assert Store.from_env().home == tmp_path / "h"
    monkeypatch.delenv("M7B_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    store = Store.from_env()
    assert store.home == tmp_path / "xdg" / "m7b"
    assert store.torrent_path("ABC") == tmp_path / "xdg" / "m7b" / "torrents" / "abc.torrent"
    assert store.converted_dir("r", "hf") == tmp_path / "xdg" / "m7b" / "converted" / "r" / "hf"


@pytest.mark.slow
def test_list_follows_a_release_through_its_states(
    cli, m7b_home: Path, tiny_manifest: str, tiny_release_src: Path
) -> None:
    store = Store(m7b_home)
    assert states(cli)[tiny_manifest] == "absent"
    store.partial_dir(tiny_manifest).mkdir(parents=True)
    assert states(cli)[tiny_manifest] == "partial"  # a download that has not finished
    store.partial_dir(tiny_manifest).rmdir()

    release = Path(shutil.copytree(tiny_release_src, store.release_dir(tiny_manifest)))
    (release / "params.json").unlink()
    assert states(cli)[tiny_manifest] == "partial"  # a release folder with a missing file

    shutil.copy(tiny_release_src / "params.json", release / "params.json")
    store.incomplete_marker(tiny_manifest).touch()
    assert states(cli)[tiny_manifest] == "partial"  # a download still running
    store.incomplete_marker(tiny_manifest).unlink()
    assert states(cli)[tiny_manifest] == "downloaded"

    store.reports_dir.mkdir()
    files = [{"path": p.name, "size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in release.iterdir()]
    store.report_path(tiny_manifest).write_text(json.dumps({"verdict": "ok", "files": files}))
    assert states(cli)[tiny_manifest] == "verified"

    hf = store.converted_dir(tiny_manifest, "hf")
    hf.mkdir(parents=True)
    assert states(cli)[tiny_manifest] == "verified"  # a conversion without its record is not finished
    (hf / "SHA256SUMS").write_text("")
    listing = json.loads(cli("list", "--json").stdout)
    row = next(r for r in listing["releases"] if r["name"] == tiny_manifest)
    assert (row["state"], row["converted"]) == ("converted", ["hf"])

    (release / "RELEASE").write_text("changed after verification")
    assert states(cli)[tiny_manifest] == "downloaded"  # the report no longer vouches for these files


def test_list_human_output(cli, m7b_home: Path) -> None:
    result = cli("list")
    assert result.code == 0
    assert "mistral-7b-v0.1" in result.stdout and "absent" in result.stdout


def test_a_store_that_is_a_file_or_cannot_be_created_is_a_storage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from m7b.errors import StorageError

    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    monkeypatch.setenv("M7B_HOME", str(a_file))
    with pytest.raises(StorageError, match="is not a folder: point M7B_HOME at a folder"):
        Store.from_env()
    store = Store(Path("/proc/m7b-store"))
    with pytest.raises(StorageError, match="could not create /proc/m7b-store/locks in the store /proc/m7b-store"):
        store.ensure_dir(store.home / "locks")
    assert not store.home.exists()


def test_a_lock_held_elsewhere_names_its_holder(tmp_path: Path) -> None:
    import subprocess
    import sys

    from m7b.errors import StorageError
    from m7b.locks import hold

    store = Store(tmp_path / "store")
    lock = store.release_lock("tiny")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from m7b.locks import hold; from m7b.store import Store; from pathlib import Path\n"
            f"with hold(Store(Path({str(store.home)!r})), Path({str(lock)!r}), 'release tiny'):\n"
            "    print('held', flush=True); sys.stdin.readline()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(StorageError, match=f"release tiny is being written by pid {holder.pid} "),
        hold(store, lock, "release tiny", wait=False),
    ):
        pass
    seen = []

    def release_holder(who) -> None:  # the waiter reports the holder once, then the holder goes away
        seen.append(who)
        holder.stdin.write("\n")
        holder.stdin.flush()

    with hold(store, lock, "release tiny", on_wait=release_holder):
        assert lock.read_text().splitlines()[0] == str(os.getpid())
    holder.wait(timeout=10)
    assert [h.pid for h in seen] == [holder.pid]
    assert lock.read_text() == ""  # no stale holder left in the file
