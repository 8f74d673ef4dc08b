"""Ownership: every file and folder m7b creates, opens for writing, renames or removes is its own, never a symlink
found where m7b writes. A link there would redirect the write (or the removal) to whatever it leads to.

The rule, in one place: below a trusted root (the store's home, or the folder above a path the user names), every
path element m7b walks to write is checked with `lstat` and a symlink is refused (`LinkInTheWayError`, exit 6,
naming the link and where it leads); files are opened with `O_NOFOLLOW`; a removal removes a link itself, never its
target, and a folder's tree without following any link inside it. The root itself is the user's to choose (a
store that is a symlink to a bigger disk is fine). Only a temporary of m7b's own with a name no one else uses
(`remove_own`) is removed when it is a link; a fixed name m7b would write (a `.partial` folder, a lock, a record,
an output) that is a link is refused, so its target is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from m7b.errors import UnsafeError


class LinkInTheWayError(UnsafeError):
    """A symlink stands where m7b would write, rename or remove: refused, and the link's target is untouched."""

    def __init__(self, path: Path, what: str = "write") -> None:
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        self.path, self.target = Path(path), target
        super().__init__(
            f"{path} is a symlink (to {target}) where m7b would {what}: m7b writes and removes only files and "
            "folders of its own, so it refused and left what the link leads to untouched; remove the link "
            f"(`rm {path}` removes only the link) or name the place it leads to instead, and rerun",
            path=str(path),
            link_target=target,
        )


def is_link(path: Path) -> bool:
    return os.path.islink(path)


def refuse_link(path: Path, what: str = "write") -> Path:
    """`path` unchanged unless it is a symlink (dangling or not): then LinkInTheWayError."""
    if is_link(path):
        raise LinkInTheWayError(path, what)
    return path


def refuse_links_below(root: Path, path: Path, what: str = "write") -> Path:
    """`path` unchanged when no element of it below `root` (root excluded, `path` included) is a symlink."""
    current = Path(root)
    for part in Path(path).relative_to(root).parts:
        current = current / part
        refuse_link(current, what)
    return path


def refuse_links_in(folder: Path, what: str = "write") -> Path:
    """`folder` unchanged when neither it nor anything inside it is a symlink (a folder libtorrent writes into by
    name, where `O_NOFOLLOW` cannot reach): else LinkInTheWayError naming the first link found."""
    refuse_link(folder, what)
    for dirpath, dirnames, filenames in os.walk(folder):  # never descends into a link
        for name in sorted(dirnames + filenames):
            refuse_link(Path(dirpath) / name, what)
    return folder


def own_dir(path: Path, root: Path) -> Path:
    """Create folder `path` and its missing parents below `root`; every element below `root` must be a real folder,
    never a symlink (LinkInTheWayError). `root` is created if missing (through whatever links lead to it). The
    disk's refusal (or a file in the way: ENOTDIR) is an OSError for the caller to word."""
    root, path = Path(root), Path(path)
    root.mkdir(parents=True, exist_ok=True)
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        with contextlib.suppress(FileExistsError):
            os.mkdir(current)  # never follows a link at its last element: EEXIST
        mode = os.lstat(current).st_mode
        if stat.S_ISLNK(mode):
            raise LinkInTheWayError(current, "create a folder")
        if not stat.S_ISDIR(mode):
            raise NotADirectoryError(errno.ENOTDIR, "a part of that path is a file, not a folder", str(current))
    return path


def open_own(path: Path, flags: int, mode: int = 0o644, what: str = "write") -> int:
    """`os.open` that never follows a symlink at `path` (`O_NOFOLLOW`, plus `O_CLOEXEC`): a link is
    LinkInTheWayError; any other refusal of the disk is the OSError."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and is_link(path):
            raise LinkInTheWayError(path, what) from exc
        raise


def touch_own(path: Path) -> None:
    """Create the empty file `path` (a marker) unless it exists; a symlink there is LinkInTheWayError."""
    os.close(open_own(path, os.O_WRONLY | os.O_CREAT))


def remove_own(path: Path) -> bool:
    """Remove what is at `path` without following any link: a symlink is removed itself (its target untouched), a
    folder with everything in it (a link inside is removed, never followed), a file unlinked. False when nothing
    was there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(mode):
        if not shutil.rmtree.avoids_symlink_attacks:  # pragma: no cover - Linux and macOS have the fd-based walk
            raise LinkInTheWayError(path, "remove")
        shutil.rmtree(path)
    else:
        os.unlink(path)
    return True
