"""The smoke report's bookkeeping: a failed check fails the battery, a skipped one (GPU-only, on a CPU) neither
passes nor fails it, and the decode speed is a figure beside the checks."""

from __future__ import annotations

import torch

from m7b.runtime.smoke import SmokeCheck, SmokeFigure, SmokeReport, skipped_gpu_paths


def _report(*checks: SmokeCheck) -> SmokeReport:
    return SmokeReport(window=16, checks=list(checks), decode_tok_s=1.0, figures=[SmokeFigure("x", 1.0, "tok/s", "")])


def test_a_skipped_check_neither_passes_nor_fails_the_battery() -> None:
    ok = SmokeCheck("a", True, "")
    bad = SmokeCheck("b", False, "")
    skipped = SmokeCheck("c", False, "", skipped="GPU-only")
    assert _report(ok, skipped).passed and _report(ok, skipped).skipped == [skipped]
    assert _report(ok, skipped).failed == []
    assert not _report(ok, bad, skipped).passed and _report(ok, bad, skipped).failed == [bad]


def test_gpu_only_paths_are_skipped_with_the_reason_off_the_gpu() -> None:
    (graph,) = skipped_gpu_paths(torch.device("cpu"), {})
    assert graph.name == "graph decode step equals eager" and not graph.passed
    assert graph.skipped == "GPU-only, this run is on cpu" and "CUDA graph" in graph.detail
    assert skipped_gpu_paths(torch.device("cuda"), {}) == []  # on a GPU the path is checked, or was not asked for
    assert skipped_gpu_paths(torch.device("cpu"), {"graph": lambda m, t, p: t}) == []
