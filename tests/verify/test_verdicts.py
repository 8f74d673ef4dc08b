"""Verdicts that claim no more than was checked (issue 17, item 5): a verify holds its release against `rm`, a
converted folder is vouched for only by the store's own record, and a fetch by manifest checks the digests the
publisher published."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from verify_helpers import install_release

from m7b.errors import StorageError
from m7b.locks import LockHeldError
from m7b.progress import ProgressEvent
from m7b.remove import remove_release
from m7b.store import Store
from m7b.verify.release import verify


class _Paused:
    """A verify run in a thread, stopped at its first progress event (mid-read) until `go` is set."""

    def __init__(self, target: str, store: Store) -> None:
        self.reading, self.go = threading.Event(), threading.Event()
        self.result: object = None

        def progress(event: ProgressEvent) -> None:
            self.reading.set()
            self.go.wait(60)

        def run() -> None:
            try:
                self.result = verify(target, store, progress=progress)
            except BaseException as exc:  # handed to the test
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> _Paused:
        self.thread.start()
        assert self.reading.wait(60), "verify never started reading"
        return self

    def __exit__(self, *exc: object) -> None:
        self.go.set()
        self.thread.join(60)


@pytest.mark.slow
def test_rm_while_a_verify_reads_the_release_fails_at_once_naming_the_verify(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    with _Paused("tiny-test", store) as paused:
        refused = cli("rm", "tiny-test", "--yes", "--json")
        assert refused.code == 8, refused.stderr
        assert f"release tiny-test is being verified by pid {os.getpid()}" in refused.stderr
        assert "wait for that verify to finish and rerun" in refused.stderr
        assert json.loads(refused.stdout.splitlines()[-1])["pid"] == os.getpid()
    # the verify went on reading a release that is still there, and its report is the store's
    assert not isinstance(paused.result, BaseException), paused.result
    assert paused.result.report.verdict == "ok" and store.release_dir("tiny-test").is_dir()
    assert store.is_verified("tiny-test")


@pytest.mark.slow
def test_a_verify_started_while_rm_removes_the_release_fails_at_once_and_writes_no_report(
    cli, m7b_home: Path, tiny_release_src: Path
) -> None:
    install_release(m7b_home, tiny_release_src, "tiny-test")
    store = Store(m7b_home)
    asked, go = threading.Event(), threading.Event()
    outcome: list[object] = []

    def confirm(removal: object) -> bool:  # rm holds the release's lock while it asks
        asked.set()
        return go.wait(60)

    rm = threading.Thread(target=lambda: outcome.append(remove_release(store, "tiny-test", confirm=confirm)))
    rm.start()
    try:
        assert asked.wait(60)
        started = cli("verify", "tiny-test")
        assert started.code == 8, started.stderr
        assert f"release tiny-test is being written by pid {os.getpid()}" in started.stderr
        assert "nothing was verified" in started.stderr
        with pytest.raises(LockHeldError) as caught:
            verify("tiny-test", store)
        assert isinstance(caught.value, StorageError) and caught.value.holder.pid == os.getpid()
    finally:
        go.set()
        rm.join(60)
    assert outcome and not store.release_dir("tiny-test").exists()
    assert not store.report_path("tiny-test").exists()  # no report for a release that is gone
