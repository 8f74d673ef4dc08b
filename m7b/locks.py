"""One writer at a time for each thing in the store: a release (with its resume data), a converted output.

A lock is `fcntl.flock` on a file the Store names (`Store.release_lock`, `Store.converted_lock`). While held, the
file holds the holder's pid and command line, so a second command can say whom it waits for. The kernel drops the
lock when its holder exits, even by kill -9, so a lock is never stale. A lock file (or a folder above it in the
store) that is a symlink is refused, never opened through (m7b.owned, exit 6). Lock files are never removed:
removing one while a second command waits on it would let a third take "the same" lock on a new file.

Writers (fetch, convert, rm) hold a lock exclusively; readers hold it shared — a seed while it serves a release,
a verify while it reads one — so any number of them may read one release while nothing writes or removes it. A
writer waits for another writer (which ends), but never for a reader (a seed may run for months): it fails at once
naming the reader, and the reader's `role` (written as the lock file's third line) says what it is doing. A
reader never waits either.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from m7b.address import ascii_int
from m7b.errors import StorageError
from m7b.owned import open_own
from m7b.store import Store

POLL_SECONDS = 0.2
COMMAND_CHARS = 300  # a magnet can be long; the holder's command is shown, not parsed
READER_ROLES = {"seed": "seeded", "verify": "verified"}  # a shared holder's role -> what it does to the release


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: pid None when it was taken an instant ago and its holder has not written itself yet."""

    what: str
    pid: int | None
    command: str

    shared: bool = False  # held by a reader (a seed, a verify), not a writer
    role: str = "seed"  # what a shared holder is: "seed" or "verify" (READER_ROLES)

    def __str__(self) -> str:
        if self.pid is None:
            return "another m7b command"
        return f"pid {self.pid} ({self.command})"

    @property
    def doing(self) -> str:
        return f"being {READER_ROLES[self.role]}" if self.shared else "being written"


@dataclass(eq=False)
class LockHeldError(StorageError):
    """Another command holds what this one wants: a writer (and the caller would not wait) or a seed."""

    holder: LockHolder
    wanted: str  # what this command would have done: "written", "removed", "seeded"

    def __post_init__(self) -> None:
        h = self.holder
        if h.shared and h.role == "seed":
            then = f"nothing was {self.wanted}; stop that seed and rerun"
        elif h.shared:
            then = f"nothing was {self.wanted}; wait for that {h.role} to finish and rerun"
        else:
            then = f"nothing was {self.wanted}; wait for that command to finish and rerun"
        super().__init__(f"{h.what} is {h.doing} by {h}: {then}", pid=h.pid, holder_command=h.command)


LockWaitCallback = Callable[[LockHolder], None]


def _this_command() -> str:
    return shlex.join(getattr(sys, "orig_argv", sys.argv))[:COMMAND_CHARS]


def _read_holder(fd: int, what: str, shared: bool) -> LockHolder:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    pid_line, _, rest = text.partition("\n")
    command, _, role = rest.partition("\n")
    pid = ascii_int(pid_line)
    return LockHolder(what, pid, command.strip(), shared, role.strip() if role.strip() in READER_ROLES else "seed")


def _held_shared(fd: int) -> bool:
    """Whether the lock another process holds is a shared one (a seed): a shared request then succeeds."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    fcntl.flock(fd, fcntl.LOCK_UN)
    return True


def _try_lock(fd: int, shared: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def hold(
    store: Store,
    lock: Path,
    what: str,
    *,
    wait: bool = True,
    on_wait: LockWaitCallback = lambda holder: None,
    should_stop: Callable[[], bool] = lambda: False,
    shared: bool = False,
    purpose: str = "written",
    role: str = "seed",
) -> Iterator[None]:
    """Hold `lock` (naming `what`, e.g. "release tiny") for the block; `shared` for a reader that serves it.

    When a writer holds it: with `wait`, report the holder through `on_wait` (again whenever the holder changes)
    and wait until it is free (KeyboardInterrupt when `should_stop` says so); without, a LockHeldError naming the
    holder. A shared request never waits, and neither does any request while a seed holds the lock shared (a seed
    runs until stopped): LockHeldError at once. `purpose` words what did not happen ("written", "removed");
    `role` what a shared holder is (READER_ROLES), so a writer it refuses can say so.
    """
    store.ensure_dir(lock.parent)
    try:
        fd = open_own(lock, os.O_RDWR | os.O_CREAT, 0o644, "take a lock")  # a symlink: LinkInTheWayError, exit 6
    except OSError as exc:
        raise StorageError(f"could not open the lock file {lock}: {exc.strerror}; check the store's permissions") from (
            exc
        )
    try:
        reported: LockHolder | None = None
        looked_twice = False
        while not _try_lock(fd, shared):
            holder = _read_holder(fd, what, shared=not shared and _held_shared(fd))
            if holder.shared and not looked_twice:
                looked_twice = True  # a writer that let go an instant ago also lets a shared request through
                continue
            if shared or holder.shared or not wait:
                raise LockHeldError(holder, purpose)
            if holder != reported:
                on_wait(holder)
                reported = holder
            if should_stop():
                raise KeyboardInterrupt
            time.sleep(POLL_SECONDS)
        me = f"{os.getpid()}\n{_this_command().replace(chr(10), ' ')}\n{role if shared else ''}\n".encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)  # several seeds of one release: the last one to start is named
        try:
            yield
        finally:
            if not shared or os.pread(fd, len(me) + 1, 0) == me:
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
