"""Issue 17, item 1: a symlink where m7b writes, renames or removes never redirects it (m7b/owned.py). For every
place verify, convert, rm, seed and `release synth`/`create` write, a symlink to a victim is planted there and
the command run: a fixed name is refused with exit 6 naming the link; a temporary of m7b's own, or a part `rm`
removes, is replaced cleanly (the link itself goes). Either way the victim is byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from m7b.mirror.create import create_release

NAME = "tiny-rel"
PRECIOUS = b"the user's own bytes: never truncated, replaced or removed by m7b\n"


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (or of `root` itself), links not followed, and every link's target."""
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    found = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            found[str(p.relative_to(root))] = "-> " + str(p.readlink())
        elif p.is_file():
            found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """What a planted link leads to: a folder of the user's, with files m7b must leave as they are."""
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "params.json").write_bytes(PRECIOUS)
    (folder / "data.bin").write_bytes(PRECIOUS * 3)
    return folder


@pytest.fixture
def stored(m7b_home: Path, tiny_release: Path) -> str:
    """The tiny release in the store as a fetch leaves it: its folder, its torrent and its release record.
    Returns its info-hash."""
    made = create_release(tiny_release, manifest_name=NAME, publisher="m7b tests")
    info_hash = made.meta.info_hash
    shutil.copytree(tiny_release, m7b_home / "releases" / NAME)
    (m7b_home / "torrents").mkdir()
    (m7b_home / "torrents" / f"{info_hash}.torrent").write_bytes(made.torrent)
    (m7b_home / "releases" / f".{NAME}.json").write_text(json.dumps({"name": NAME, "info_hash": info_hash}))
    return info_hash


def plant(link: Path, target: Path) -> Path:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return link


def assert_refused(result, link: Path) -> None:
    assert result.code == 6, (result.code, result.stdout, result.stderr)
    assert str(link) in result.stderr and "symlink" in result.stderr, result.stderr
    assert "remove the link" in result.stderr  # what to do next
    assert link.is_symlink()


# command, the path planted as a link (relative to the store), whether it leads to the victim folder or its file
REFUSED = {
    "verify: reports/NAME.json": (["verify", NAME], f"reports/{NAME}.json", "file"),
    "verify: reports/": (["verify", NAME], "reports", "folder"),
    "convert: locks/converted/NAME/native.lock": (["convert", NAME], f"locks/converted/{NAME}/native.lock", "file"),
    "convert: locks/converted/NAME/": (["convert", NAME], f"locks/converted/{NAME}", "folder"),
    "convert: locks/": (["convert", NAME], "locks", "folder"),
    "convert: converted/NAME/native": (["convert", NAME], f"converted/{NAME}/native", "empty folder"),
    "convert: converted/NAME/": (["convert", NAME], f"converted/{NAME}", "folder"),
    "convert: converted/": (["convert", NAME], "converted", "folder"),
    "convert --to hf: converted/NAME/hf": (
        ["convert", NAME, "--to", "hf"],
        f"converted/{NAME}/hf",
        "empty folder",
    ),
    "rm: locks/releases/NAME.lock": (["rm", NAME, "--yes"], f"locks/releases/{NAME}.lock", "file"),
    "rm: locks/converted/NAME/hf.lock": (["rm", NAME, "--yes"], f"locks/converted/{NAME}/hf.lock", "file"),
    "rm: converted/ (leads out of the store)": (["rm", NAME, "--yes"], "converted", "folder"),
    "rm: reports/ (leads out of the store)": (["rm", NAME, "--yes"], "reports", "folder"),
    "seed: locks/releases/NAME.lock": (
        ["seed", NAME, "--loopback", "--listen", "127.0.0.1:0"],
        f"locks/releases/{NAME}.lock",
        "file",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("row", list(REFUSED), ids=list(REFUSED))
def test_a_symlink_where_a_store_command_writes_is_refused(cli, m7b_home: Path, stored: str, victim: Path, row) -> None:
    args, rel, kind = REFUSED[row]
    if kind == "empty folder":
        victim = victim / "empty"
        victim.mkdir()
    if rel == f"converted/{NAME}" or rel == "converted" or rel == "reports":
        (victim / NAME).mkdir()  # what rm would otherwise remove through the link
        (victim / NAME / "keep").write_bytes(PRECIOUS)
        (victim / f"{NAME}.json").write_bytes(PRECIOUS)
    target = victim / "params.json" if kind == "file" else victim
    link = plant(m7b_home / rel, target)
    before = digests(victim)
    store_before = {k: v for k, v in digests(m7b_home).items() if not k.startswith("locks/")}
    result = cli(*args, timeout=120)
    assert_refused(result, link)
    assert digests(victim) == before
    if args[0] == "rm":  # refused before anything was removed (the lock files it took are all that is new)
        assert {k: v for k, v in digests(m7b_home).items() if not k.startswith("locks/")} == store_before


@pytest.mark.slow
def test_rm_removes_a_link_in_the_store_never_what_it_leads_to(cli, m7b_home: Path, stored: str, victim: Path) -> None:
    """rm's parts are m7b's own: a part that is a link, or a link inside a release folder, is removed itself."""
    plant(m7b_home / "releases" / NAME / "extra-link", victim / "params.json")
    plant(m7b_home / "releases" / NAME / "folder-link", victim)
    plant(m7b_home / "reports" / f"{NAME}.json", victim / "params.json")
    plant(m7b_home / "resume" / f"{stored}.fastresume", victim / "data.bin")
    plant(m7b_home / "releases" / f".{NAME}.partial", victim)
    before = digests(victim)
    result = cli("rm", NAME, "--yes", "--json")
    assert result.code == 0, result.stderr
    assert digests(victim) == before
    assert not (m7b_home / "releases" / NAME).exists() and not (m7b_home / "releases" / NAME).is_symlink()
    for gone in (f"reports/{NAME}.json", f"resume/{stored}.fastresume", f"releases/.{NAME}.partial"):
        assert not (m7b_home / gone).is_symlink(), gone


@pytest.mark.slow
def test_rm_of_a_release_folder_that_is_a_link_removes_the_link(cli, m7b_home: Path, stored: str, tmp_path) -> None:
    real = tmp_path / "elsewhere"
    shutil.move(m7b_home / "releases" / NAME, real)
    plant(m7b_home / "releases" / NAME, real)
    before = digests(real)
    result = cli("rm", NAME, "--yes")
    assert result.code == 0, result.stderr
    assert not (m7b_home / "releases" / NAME).is_symlink()
    assert digests(real) == before


@pytest.mark.slow
def test_convert_removes_a_stale_temporary_that_is_a_link_and_converts(
    cli, m7b_home: Path, stored: str, victim: Path
) -> None:
    """`.native.PID.XXXX.partial` is m7b's own temporary name (atomic_dir): a link there is removed, never
    followed (the old code's rmtree would have been handed the victim)."""
    link = plant(m7b_home / "converted" / NAME / ".native.999999999.abcd.partial", victim)
    before = digests(victim)
    result = cli("convert", NAME)
    assert result.code == 0, result.stderr
    assert not link.is_symlink() and not link.exists()
    assert digests(victim) == before
    assert (m7b_home / "converted" / NAME / "native" / "SHA256SUMS").is_file()


@pytest.mark.slow
def test_convert_out_that_is_a_link_is_refused(cli, m7b_home: Path, stored: str, victim: Path, tmp_path) -> None:
    """A folder the user names (--out) that is a symlink: m7b would rename its output over the link; it is
    refused (name the folder it leads to instead), and the folder is untouched."""
    empty = victim / "empty"
    empty.mkdir()
    link = plant(tmp_path / "out-link", empty)
    before = digests(victim)
    result = cli("convert", NAME, "--out", link)
    assert_refused(result, link)
    assert digests(victim) == before
    assert cli("convert", NAME, "--out", empty).code == 0  # the folder it leads to, named, is fine


@pytest.mark.slow
def test_release_synth_out_that_is_a_link_is_refused(cli, victim: Path, tmp_path: Path) -> None:
    empty = victim / "empty"
    empty.mkdir()
    link = plant(tmp_path / "synth-out", empty)
    before = digests(victim)
    result = cli("release", "synth", link, "--preset", "tiny")
    assert_refused(result, link)
    assert digests(victim) == before


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".torrent", ".toml"])
@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
def test_release_create_outputs_that_are_links_are_refused(
    cli, tiny_release: Path, victim: Path, suffix: str, force: bool
) -> None:
    """DIR.torrent and DIR.toml beside DIR: a link there is neither read as "the same content" nor replaced."""
    link = plant(tiny_release.parent / f"{tiny_release.name}{suffix}", victim / "params.json")
    before = digests(victim)
    result = cli("release", "create", tiny_release, *(["--force"] if force else []))
    assert_refused(result, link)
    assert digests(victim) == before


@pytest.mark.slow
def test_seed_refuses_a_completion_record_that_is_a_link(cli, m7b_home: Path, stored: str, victim: Path) -> None:
    """A seed rechecks the release, then records it complete (resume/IH.complete.json): written by name."""
    link = plant(m7b_home / "resume" / f"{stored}.complete.json", victim / "params.json")
    before = digests(victim)
    proc = subprocess.Popen(
        [sys.executable, "-m", "m7b", "seed", NAME, "--loopback", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 6, stderr
    assert str(link) in stderr
    assert digests(victim) == before
