"""Fixtures for the runtime suites: the tiny synthetic release (W=16) loaded once, and its transformers twin."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from m7b.runtime.loader import Runtime, load_runtime
from m7b.runtime.weights import load_state_dict


@pytest.fixture(scope="session")
def tiny_runtime(tiny_release_src: Path) -> Runtime:
    return load_runtime(tiny_release_src, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def tiny_state(tiny_release_src: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(tiny_release_src)[0]


@pytest.fixture(scope="session")
def random_ids() -> Callable[[int, int], torch.Tensor]:
    def make(n: int, seed: int = 0) -> torch.Tensor:
        ids = torch.randint(3, 32000, (1, n), generator=torch.Generator().manual_seed(seed))
        ids[0, 0] = 1
        return ids

    return make


@dataclass
class InProcessResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli_inproc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., InProcessResult]:
    """`m7b ARGS` through the real entry point (error rendering, exit codes) in this process: no torch import
    per call, and monkeypatches apply."""
    from m7b.cli.app import main

    def run(*args: str | Path) -> InProcessResult:
        monkeypatch.setattr(sys, "argv", ["m7b", *map(str, args)])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return InProcessResult(code, captured.out, captured.err)

    return run
