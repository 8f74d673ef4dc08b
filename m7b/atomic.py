"""Write files and folders so that nothing half-written ever carries a final name.

Write to a temporary name in the same folder, fsync, then rename over the final name.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from m7b.errors import StorageError
from m7b.owned import is_link, own_dir, refuse_link, remove_own
from m7b.paths import check_path_length

if TYPE_CHECKING:
    from _typeshed import OpenBinaryModeWriting


def storage_error(exc: OSError, path: Path, verb: str = "write") -> StorageError:
    """Turn an OSError into a StorageError that says what to do next."""
    if exc.errno == errno.ENOSPC:
        hint = "the disk is full: free space or choose another output folder"
    elif exc.errno == errno.EROFS:
        hint = "the file system is read-only: choose a folder you can write to"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = "permission denied: choose a folder you can write to"
    elif exc.errno == errno.ENOTDIR:
        hint = "a part of that path is a file, not a folder: choose another output folder"
    elif exc.errno == errno.ENAMETOOLONG:
        hint = "a name in that path is too long for the file system: choose a shorter one"
    else:
        hint = exc.strerror or str(exc)
    return StorageError(f"could not {verb} {path}: {hint}; nothing was left under that name")


def make_dirs(path: Path) -> Path:
    """Create the folder `path` with its parents (an output folder); the disk's refusal is a StorageError."""
    path = Path(path)
    check_path_length(path, "the output folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, path, "create the folder") from exc
    if not path.is_dir():
        raise StorageError(f"could not create the folder {path}: a file has that name; choose another output folder")
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def default_mode(is_dir: bool) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, mode: OpenBinaryModeWriting = "wb") -> Iterator[BinaryIO]:
    """Yield a file open for writing; on success it is fsynced and renamed to `path`.

    On any error the temporary file is removed and `path` is untouched. A symlink at `path` is refused
    (LinkInTheWayError, exit 6), never replaced nor followed: whatever it leads to stays as it was.
    """
    path = refuse_link(Path(path))
    check_path_length(path, "the output file")
    tmp_path = path.parent / f".{path.name}.{_random_part()}.tmp"
    ours = True  # whether what is at tmp_path is this call's (until its creation says otherwise)
    try:
        # made inside the `try`: an interrupt the moment it exists (Ctrl-C, SIGTERM) still removes it
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            ours = False
            raise
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_path, default_mode(is_dir=False))
        os.replace(tmp_path, path)
        fsync_dir(path.parent)
    except OSError as exc:  # a read-only or missing folder, a full disk: nothing is left under either name
        if ours:
            tmp_path.unlink(missing_ok=True)
        raise storage_error(exc, path) from exc
    except BaseException:
        if ours:
            tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path) as fh:
        fh.write(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the temporary folders `atomic_dir(path)` left when its process was killed (`.NAME.PID.XXXX.partial`
    whose PID no longer runs); a live process's folder is left alone. A symlink under such a name is never m7b's
    (`atomic_dir` makes folders): the link itself is removed, never what it leads to. Returns what was removed."""
    removed = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.partial"):
        pid = tmp.name[len(path.name) + 2 :].split(".", 1)[0]
        if not pid.isdecimal() or not (is_link(tmp) or tmp.is_dir()) or (not is_link(tmp) and _alive(int(pid))):
            continue
        with contextlib.suppress(OSError):
            remove_own(tmp)
        removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


@contextlib.contextmanager
def atomic_dir(path: Path, root: Path | None = None) -> Iterator[Path]:
    """Yield a temporary folder next to `path`; on success it is renamed to `path`.

    `path` must not exist or be an empty folder, and is never a symlink (LinkInTheWayError, exit 6). Its missing
    parents are created; below `root` (the store's home, for an output in the store) none may be a symlink. On any
    error the temporary folder is removed.
    """
    path = refuse_link(Path(path))
    check_path_length(path, "the output folder")
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise StorageError(f"output folder {path} exists and is not empty: choose a new folder or remove it first")
    if root is not None:
        try:
            own_dir(path.parent, root)
        except OSError as exc:
            raise storage_error(exc, path, "create the folder") from exc
    else:
        make_dirs(path.parent)
    try:
        remove_stale_partials(path)
    except OSError as exc:  # a read-only file system, a folder we may not write: nothing was made
        raise storage_error(exc, path) from exc
    tmp = path.parent / f".{path.name}.{os.getpid()}.{_random_part()}.partial"
    ours = True  # whether what is at tmp is this call's (until its creation says otherwise)
    try:
        # made inside the `try`: an interrupt the moment it exists (Ctrl-C, SIGTERM) still removes it
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            ours = False
            raise
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, default_mode(is_dir=True))
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        if ours:
            shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(exc, path) from exc
    except BaseException:
        if ours:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _random_part() -> str:
    """The random part of a temporary's name (48 bits: no other temporary beside it has it)."""
    return secrets.token_hex(6)
