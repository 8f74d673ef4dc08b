"""Room on disk: what a folder's file system has free, what a set of files takes, and whether a download fits.

Sizes on disk are allocated blocks (`st_blocks * 512`), as `du` counts them: a sparse file a download has only
begun takes what it holds, not its final size, and removing it frees exactly that.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from m7b.errors import StorageError
from m7b.sizes import format_bytes

MARGIN_BYTES = 1 << 20  # file-system metadata, the torrent and resume data written beside the files
MARGIN_FRACTION = 1 / 1000  # and a little per byte: indirect blocks, extents


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest parent that exists (where a folder not made yet would live)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system that holds `path` (or would hold it)."""
    st = os.statvfs(nearest_existing(path))
    return st.f_bavail * st.f_frsize


def disk_bytes(path: Path) -> int:
    """Bytes `path` takes on disk: a file's allocated blocks, a folder's files (each inode counted once), 0 when
    it is not there. Symlinks are not followed."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for st in _stats(path):
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def _stats(path: Path) -> Iterable[os.stat_result]:
    try:
        st = path.lstat()
    except OSError:
        return
    yield st
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in [*dirs, *files]:
                try:
                    yield os.lstat(os.path.join(root, name))
                except OSError:
                    continue


@dataclass(frozen=True)
class Room:
    """Whether a release fits where it is written: its size, what of it is already there, what the disk has."""

    folder: Path  # where the files are written
    size: int  # the release's bytes
    present: int  # bytes of its files already on disk there
    free: int  # bytes free on that file system

    @property
    def needed(self) -> int:
        """What is still missing, with a small margin."""
        missing = max(self.size - self.present, 0)
        return missing + MARGIN_BYTES + int(missing * MARGIN_FRACTION) if missing else 0

    @property
    def fits(self) -> bool:
        return self.needed <= self.free


class NoRoomError(StorageError):
    """The destination's file system cannot hold what is still missing of a release: nothing was written."""

    def __init__(self, room: Room, name: str) -> None:
        self.room = room
        super().__init__(
            f"{name} needs {format_bytes(room.needed)} more in {room.folder} ({format_bytes(room.size)} in all, "
            f"{format_bytes(room.present)} already there) but that file system has {format_bytes(room.free)} free. "
            "Nothing was written: free space there, or fetch into a folder on a larger disk",
            size=room.size,
            present=room.present,
            needed=room.needed,
            free=room.free,
            folder=str(room.folder),
        )


def room_for(folder: Path, files: Iterable[tuple[str, int]]) -> Room:
    """The room for files (path relative to `folder`, size) written into `folder`: bytes already there count
    (up to each file's size), so a resumed or repaired download needs only what is missing."""
    size = present = 0
    for rel, file_size in files:
        size += file_size
        try:
            st = (folder / rel).lstat()
        except OSError:
            continue
        present += min(st.st_blocks * 512, file_size)
    return Room(folder=folder, size=size, present=present, free=free_bytes(folder))


def check_room(room: Room, name: str) -> None:
    if not room.fits:
        raise NoRoomError(room, name)
