from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from m7b.atomic import atomic_dir, atomic_file
from m7b.errors import StorageError


def test_atomic_file_leaves_nothing_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old content")
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_atomic_file_turns_a_full_disk_into_a_storage_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(StorageError, match="disk is full"), atomic_file(target) as fh:
        fh.write(b"x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_refuses_a_non_empty_folder_and_cleans_up(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(StorageError, match="exists and is not empty"), atomic_dir(busy):
        pass
    assert (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError), atomic_dir(tmp_path / "new") as tmp:
        (tmp / "a").write_text("half")
        raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]


def test_outputs_get_normal_permissions(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("x")
    with atomic_file(tmp_path / "g") as fh:
        fh.write(b"y")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "g").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("syscall", ["open", "mkdir"])
def test_an_interrupt_the_moment_the_temporary_exists_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syscall: str
) -> None:
    """Ctrl-C or SIGTERM (a KeyboardInterrupt at the next bytecode) right after the temporary file or folder is
    created, before any write: it is removed all the same, and the final name never appears."""
    real = getattr(os, syscall)

    def create_then_interrupt(*args, **kwargs):
        made = real(*args, **kwargs)
        monkeypatch.setattr(os, syscall, real)
        if isinstance(made, int):
            os.close(made)  # the file's descriptor, never handed back
        raise KeyboardInterrupt

    out = tmp_path / "out"
    monkeypatch.setattr(os, syscall, create_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        if syscall == "open":
            with atomic_file(out) as fh:
                fh.write(b"never")
        else:
            with atomic_dir(out) as folder:
                (folder / "x").write_bytes(b"never")
    assert list(tmp_path.iterdir()) == []
