"""The runtime's commands work on a machine without libtorrent or mistral-common (a GPU box with torch only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BLOCKER = (
    "import sys, runpy\n"
    "sys.modules['libtorrent'] = None\n"  # `import libtorrent` now raises ImportError
    "sys.modules['mistral_common'] = None\n"
    "sys.argv[0] = 'm7b'\n"
    "runpy.run_module('m7b', run_name='__main__', alter_sys=True)\n"
)


def m7b_without_extras(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_the_blocker_does_block() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKER.split("sys.argv")[0] + "import libtorrent"], text=True, capture_output=True
    )
    assert proc.returncode != 0 and "import of libtorrent halted" in proc.stderr


@pytest.mark.slow
def test_synth_run_and_smoke_need_neither_libtorrent_nor_mistral_common(tiny_release_src, tmp_path, m7b_home) -> None:
    out = tmp_path / "made"
    synth = m7b_without_extras(
        "release", "synth", out, "--preset", "tiny", "--tokenizer", tiny_release_src / "tokenizer.model"
    )
    assert synth.returncode == 0, synth.stderr
    run = m7b_without_extras("run", out, "-p", "Hello", "--max-tokens", "4", "--device", "cpu", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["generated_tokens"] == 4
    smoke = m7b_without_extras("smoke", out, "--device", "cpu", "--json")
    assert smoke.returncode == 0, smoke.stderr
    assert json.loads(smoke.stdout)["passed"]
