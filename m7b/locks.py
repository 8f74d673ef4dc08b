"""One writer at a time for each thing in the store: a release (with its resume data), a converted output.

A lock is `fcntl.flock` on a file the Store names (`Store.release_lock`, `Store.converted_lock`). While held, the
file holds the holder's pid and command line, so a second command can say whom it waits for. The kernel drops the
lock when its holder exits, even by kill -9, so a lock is never stale. Lock files are never removed: removing one
while a second command waits on it would let a third take "the same" lock on a new file.
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

from m7b.errors import StorageError
from m7b.store import Store

POLL_SECONDS = 0.2
COMMAND_CHARS = 300  # a magnet can be long; the holder's command is shown, not parsed


@dataclass(frozen=True)
class LockHolder:
    """Who holds a lock: pid None when it was taken an instant ago and its holder has not written itself yet."""

    what: str
    pid: int | None
    command: str

    def __str__(self) -> str:
        if self.pid is None:
            return "another m7b command"
        return f"pid {self.pid} ({self.command})"


LockWaitCallback = Callable[[LockHolder], None]


def _this_command() -> str:
    return shlex.join(getattr(sys, "orig_argv", sys.argv))[:COMMAND_CHARS]


def _read_holder(fd: int, what: str) -> LockHolder:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    pid_line, _, command = text.partition("\n")
    pid = int(pid_line) if pid_line.strip().isdigit() else None
    return LockHolder(what, pid, command.strip())


@contextmanager
def hold(
    store: Store,
    lock: Path,
    what: str,
    *,
    wait: bool = True,
    on_wait: LockWaitCallback = lambda holder: None,
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[None]:
    """Hold `lock` (naming `what`, e.g. "release tiny") for the block.

    When another process holds it: with `wait`, report the holder through `on_wait` (again whenever the holder
    changes) and wait until it is free (KeyboardInterrupt when `should_stop` says so); without, a StorageError
    naming the holder.
    """
    store.ensure_dir(lock.parent)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StorageError(f"could not open the lock file {lock}: {exc.strerror}; check the store's permissions") from (
            exc
        )
    try:
        reported: LockHolder | None = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(fd, what)
                if not wait:
                    raise StorageError(
                        f"{what} is being written by {holder}: nothing was changed; wait for that command to "
                        "finish and rerun"
                    ) from None
                if holder != reported:
                    on_wait(holder)
                    reported = holder
                if should_stop():
                    raise KeyboardInterrupt from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n{_this_command()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing the descriptor releases the flock
