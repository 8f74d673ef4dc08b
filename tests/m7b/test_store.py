from __future__ import annotations

import json
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
