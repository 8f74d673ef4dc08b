"""Issue 17: inputs that ended in an internal error (exit 1) are refused with their exit code and a clear message:
a path element over 255 bytes at every entry point, an output folder the disk will not create, a piece size
libtorrent cannot take, a magnet whose name would make a store folder name too long."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import pytest

from m7b.atomic import atomic_dir, atomic_file, make_dirs
from m7b.errors import InvalidInputError, StorageError
from m7b.paths import NAME_MAX, check_path_length, length_problem
from m7b.release import SLUG_MAX, slug
from m7b.store import Store

LONG = "a" * 300


@pytest.fixture
def inproc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    """`m7b ARGS` through the real entry point in this process, so monkeypatches apply: (exit code, stderr)."""
    from m7b.cli.app import main

    def run(*args: str | Path) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["m7b", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
        return code, capsys.readouterr().err

    return run


def entry_points(release: Path, out: Path) -> dict[str, tuple[str, ...]]:
    long_dir = out / LONG
    return {
        "show a manifest path": ("show", f"{long_dir}.toml"),
        "show a name": ("show", LONG),
        "verify a folder": ("verify", long_dir),
        "verify --manifest": ("verify", release, "--manifest", f"{long_dir}.toml"),
        "verify --torrent": ("verify", release, "--torrent", f"{long_dir}.torrent"),
        "run": ("run", long_dir, "--prompt", "hi"),
        "smoke": ("smoke", long_dir),
        "convert --out": ("convert", release, "--out", long_dir),
        "fetch a .torrent": ("fetch", f"{long_dir}.torrent", "--timeout", "1"),
        "fetch --dest": ("fetch", "mistral-7b-v0.1", "--dest", long_dir, "--timeout", "1"),
        "seed": ("seed", long_dir),
        "rm": ("rm", long_dir, "--yes"),
        "release synth": ("release", "synth", long_dir),
        "release create a folder": ("release", "create", long_dir),
        "release create --out": ("release", "create", release, "--out", long_dir, "--no-inspect"),
    }


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry",
    list(entry_points(Path("r"), Path("o"))),
)
def test_a_path_element_over_255_bytes_is_refused_at_every_entry_point(cli, m7b_home, tiny_release, entry) -> None:
    result = cli(*entry_points(tiny_release, tiny_release.parent)[entry], timeout=60)
    assert result.code == 4, (result.code, result.stderr)
    assert re.search(r"has an element of 30[058] bytes, over the 255 a file or folder name may have", result.stderr)
    assert "give a shorter one" in result.stderr and "internal error" not in result.stderr


def test_a_store_folder_name_over_255_bytes_is_refused(cli, tmp_path) -> None:
    result = cli("list", env={"M7B_HOME": str(tmp_path / LONG)})
    assert result.code == 4
    assert "the store (M7B_HOME)" in result.stderr and "has an element of 300 bytes" in result.stderr


def test_any_enametoolong_is_refused_with_exit_4(inproc, m7b_home, tiny_release) -> None:
    """The backstop: a too-long path that reaches the file system unchecked (here the .torrent verify reads) is
    exit 4, never an internal error."""
    code, stderr = inproc("verify", tiny_release, "--torrent", tiny_release.parent / f"{LONG}.torrent")
    assert code == 4 and "has an element of 308 bytes" in stderr and "internal error" not in stderr


def test_the_length_rule_counts_bytes_as_the_file_system_does(tmp_path) -> None:
    assert length_problem("é" * 127) is None  # 254 bytes
    assert "256 bytes" in (length_problem("é" * 128) or "")
    assert "4,097 bytes" in (length_problem("a/" * 2048 + "a") or "")
    with pytest.raises(InvalidInputError, match="give a shorter one"):
        check_path_length(tmp_path / ("x" * (NAME_MAX + 1)), "the output")
    (tmp_path / ("x" * NAME_MAX)).write_text("fits")


def test_a_magnet_with_a_long_name_gets_a_store_name_that_fits() -> None:
    made = slug("Mistral " * 200)
    assert len(made) <= SLUG_MAX and length_problem(made) is None and made.startswith("mistral-")


def erofs(*args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS))


def refused(real):
    """`real` (os.open, os.mkdir) refusing m7b's temporaries (`.NAME.….tmp` / `.partial`) as a read-only file
    system refuses them, and doing anything else."""

    def call(path, *args, **kwargs):
        if str(path).endswith((".tmp", ".partial")):
            erofs()
        return real(path, *args, **kwargs)

    return call


def test_an_output_on_a_read_only_file_system_is_a_storage_error(tmp_path, monkeypatch) -> None:
    real_open, real_mkdir = os.open, os.mkdir
    monkeypatch.setattr(os, "open", refused(real_open))
    with pytest.raises(StorageError, match="read-only: choose a folder"), atomic_file(tmp_path / "f"):
        pass
    monkeypatch.setattr(os, "mkdir", refused(real_mkdir))
    with pytest.raises(StorageError, match="read-only"), atomic_dir(tmp_path / "d"):
        pass
    monkeypatch.undo()
    monkeypatch.setattr(Path, "mkdir", erofs)
    with pytest.raises(StorageError, match="could not create the folder .*: the file system is read-only"):
        make_dirs(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_release_create_into_a_read_only_folder_is_exit_8(inproc, m7b_home, tiny_release, tmp_path, monkeypatch):
    out = tmp_path / "ro" / "out"
    original = Path.mkdir

    def mkdir(self: Path, *args, **kwargs) -> None:
        if self == out:
            erofs()
        original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, stderr = inproc("release", "create", tiny_release, "--out", out, "--no-inspect")
    assert code == 8, stderr
    assert "the file system is read-only: choose a folder you can write to" in stderr


def test_convert_beside_a_read_only_release_is_exit_8(inproc, m7b_home, tiny_release, monkeypatch) -> None:
    monkeypatch.setattr(os, "mkdir", refused(os.mkdir))
    code, stderr = inproc("convert", tiny_release)
    assert code == 8, stderr
    assert f"could not write {tiny_release.parent}" in stderr and "read-only" in stderr


def test_the_verify_report_in_a_read_only_store_is_exit_8(m7b_home, monkeypatch) -> None:
    store = Store.from_env()
    original = os.mkdir

    def mkdir(path, *args, **kwargs) -> None:  # the store's folders are made one element at a time (m7b.owned)
        if Path(path) == store.reports_dir:
            erofs()
        original(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(StorageError, match="reports in the store .*: the file system is read-only") as info:
        store.save_report("mistral-tiny", {"verdict": "ok"})
    assert info.value.exit_code == 8


@pytest.mark.parametrize("size", ["1T", "256M", "1G", str(1 << 62)])
def test_a_piece_size_libtorrent_cannot_take_is_refused(cli, m7b_home, tiny_release, tmp_path, size) -> None:
    result = cli("release", "create", tiny_release, "--out", tmp_path / "out", "--piece-size", size, "--json")
    assert result.code == 4, result.stderr
    assert "expected a power of two from 16K to 128M" in result.stderr
    assert json.loads(result.stdout)["exit_code"] == 4


def test_release_create_refuses_a_manifest_m7b_would_not_load_before_hashing(cli, m7b_home, tiny_release, tmp_path):
    out = tmp_path / "out"
    result = cli("release", "create", tiny_release, "--out", out, "--title", "T" * 300)
    assert result.code == 4, result.stderr
    assert "field 'title': expected at most 256 characters, found 300" in result.stderr
    assert "nothing was made" in result.stderr and not out.exists()
