"""`m7b run` on the CPU by default computes from the memory-mapped checkpoint: its private memory does not grow
with the weights (the real 7B, 14.5 GB of bf16, runs on a 16 GB machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from m7b.synth import synthesize


def rss_anon_kb(pid: int) -> int:
    """Private resident memory of a process (RssAnon of /proc/PID/status), in kB; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for line in text.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0


def peak_private_run(release: Path, *extra: str) -> tuple[int, dict]:
    """Peak RssAnon (bytes) of `python -m m7b run RELEASE --json` sampled every 2 ms, and its JSON record."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "m7b", "run", str(release), "-p", "Hello", "--max-tokens", "4", "--device", "cpu"]
        + ["--json", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, rss_anon_kb(proc.pid))
        time.sleep(0.002)
    stdout, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    return peak * 1024, json.loads(stdout)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_default_cpu_run_keeps_the_weights_out_of_private_memory(tiny_release_src, tmp_path) -> None:
    large = synthesize(tmp_path / "bench-cpu", "bench-cpu", seed=0)
    small_bytes = (tiny_release_src / "consolidated.00.pth").stat().st_size
    # The interpreter and torch alone hold ~150 MB of private memory, so compare two releases: what grows with
    # the checkpoint is what the weights cost.
    base, _ = peak_private_run(tiny_release_src)
    peak, record = peak_private_run(large.path)
    assert record["dtype"] == "bfloat16" and record["device"] == "cpu"
    growth = peak - base
    assert growth <= 0.25 * (large.checkpoint_bytes - small_bytes), (
        f"private memory grew by {growth / 1e6:.1f} MB for {large.checkpoint_bytes / 1e6:.1f} MB of weights"
    )
    # float32 on the CPU converts every weight: the same measurement sees it (the bound above can fail).
    wide, record = peak_private_run(large.path, "--dtype", "float32")
    assert record["dtype"] == "float32"
    assert wide - base > large.checkpoint_bytes


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("checkpoint", ["pth", "safetensors"])
def test_a_mixture_of_experts_runs_from_the_mapped_checkpoint_in_either_format(
    mixtral_tiny_src, tmp_path, checkpoint
) -> None:
    large = synthesize(tmp_path / "mixtral-small", "mixtral-small", seed=0, checkpoint_format=checkpoint)
    small_bytes = (mixtral_tiny_src / "consolidated.00.pth").stat().st_size
    base, _ = peak_private_run(mixtral_tiny_src)
    peak, record = peak_private_run(large.path)
    assert record["dtype"] == "bfloat16" and record["size"]["fits"] is True
    growth = peak - base
    assert growth <= 0.25 * (large.checkpoint_bytes - small_bytes), (
        f"private memory grew by {growth / 1e6:.1f} MB for {large.checkpoint_bytes / 1e6:.1f} MB of weights"
    )
