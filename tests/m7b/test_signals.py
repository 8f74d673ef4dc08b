"""SIGTERM (what `kill`, systemd and `timeout` send) ends every command as Ctrl-C does: exit 130, its temporary files
removed, a line that says so, and what was finished before left as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from m7b.synth import synthesize

pytestmark = pytest.mark.slow
PTH = "consolidated.00.pth"


@pytest.fixture(scope="module")
def big_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 108 MiB release, published (its .torrent and manifest beside it), so verify binds it."""
    root = synthesize(tmp_path_factory.mktemp("big") / "mistral-big", preset="bench-cpu").path
    made = subprocess.run([sys.executable, "-m", "m7b", "release", "create", root], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    return root


def start(*args: str | Path, home: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "m7b", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "M7B_HOME": str(home)},
    )


def reads(proc: subprocess.Popen[str], path: Path) -> bool:
    """Whether the process has `path` open now (it is reading it)."""
    try:
        fds = os.listdir(f"/proc/{proc.pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{proc.pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def terminate_when(proc: subprocess.Popen[str], ready: Callable[[], bool]) -> tuple[str, str] | None:
    """SIGTERM the process at a moment `ready()` holds: it is stopped (SIGSTOP) when `ready()` is seen, and
    signalled only if `ready()` still holds while it cannot move; (stdout, stderr), or None if it finished first."""
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGSTOP)
            caught = ready()
            if caught:
                proc.send_signal(signal.SIGTERM)
            os.kill(proc.pid, signal.SIGCONT)
            if caught:
                return proc.communicate(timeout=60)
        time.sleep(0.002)
    proc.communicate(timeout=60)
    return None


def interrupted(
    args: list[str | Path], ready: Callable[[subprocess.Popen[str]], bool], home: Path
) -> tuple[int, str, str]:
    """Run `m7b ARGS` and SIGTERM it mid-way (a few tries: a run that finishes before it is caught is rerun)."""
    for _ in range(5):
        proc = start(*args, home=home)
        result = terminate_when(proc, lambda p=proc: ready(p))
        if result is not None:
            return proc.returncode, *result
    pytest.fail(f"m7b {args[0]} finished each time before it could be interrupted")


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".*") if p.name.endswith((".partial", ".tmp"))] if folder.is_dir() else []


def test_sigterm_mid_convert_exits_130_and_leaves_no_temporary_folder(big_release: Path, tmp_path: Path) -> None:
    out, home = tmp_path / "out", tmp_path / "home"
    args: list[str | Path] = ["convert", big_release, "--to", "native", "--out", out, "--json"]
    code, stdout, stderr = interrupted(args, lambda p: bool(partials(tmp_path)) and reads(p, big_release / PTH), home)
    assert code == 130, stderr
    assert "interrupted (SIGTERM)" in stderr and "temporary files removed" in stderr
    assert json.loads(stdout)["exit_code"] == 130
    assert partials(tmp_path) == [] and not out.exists()  # nothing half-written, under any name


def test_sigterm_mid_verify_exits_130_and_writes_no_report(big_release: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    code, _, stderr = interrupted(["verify", big_release, "--json"], lambda p: reads(p, big_release / PTH), home)
    assert code == 130, stderr
    assert "interrupted (SIGTERM)" in stderr
    assert not (home / "reports").exists() or list((home / "reports").iterdir()) == []


def test_sigterm_mid_release_create_exits_130_and_leaves_the_folder_as_it_was(
    big_release: Path, tmp_path: Path
) -> None:
    publisher = tmp_path / "publisher"
    folder = publisher / "to-publish"
    folder.mkdir(parents=True)
    for child in big_release.iterdir():
        os.link(child, folder / child.name)  # the same files, without copying them
    before = sorted(p.name for p in publisher.iterdir())
    args: list[str | Path] = ["release", "create", folder, "--json"]
    code, _, stderr = interrupted(args, lambda p: reads(p, folder / PTH), tmp_path / "home")
    assert code == 130, stderr
    assert "interrupted (SIGTERM)" in stderr
    assert sorted(p.name for p in publisher.iterdir()) == before  # no .torrent, no .toml, no temporary file
    assert partials(folder) == []
