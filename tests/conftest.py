"""Fixtures shared by every suite: an isolated store, synthetic releases, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from m7b.synth import synthesize

# Property-based fuzzing of every reader of outside data (tests/fuzz): a fixed budget for CI; a long campaign for
# bench/ with `pytest tests/fuzz --hypothesis-profile=long` or `M7B_FUZZ=long`.
_FUZZ_CHECKS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=120, deadline=None, suppress_health_check=_FUZZ_CHECKS, derandomize=True)
settings.register_profile("long", max_examples=20_000, deadline=None, suppress_health_check=_FUZZ_CHECKS)
settings.load_profile(os.environ.get("M7B_FUZZ", "ci"))


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def m7b_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty store for this test (M7B_HOME), also seen by subprocesses."""
    home = tmp_path / "m7b-home"
    monkeypatch.setenv("M7B_HOME", str(home))
    monkeypatch.delenv("M7B_MANIFESTS", raising=False)
    return home


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """Run `python -m m7b ARGS` as a user would; returns exit code, stdout and stderr."""

    def run(*args: str | Path, timeout: float = 300, env: dict[str, str] | None = None) -> CliResult:
        proc = subprocess.run(
            [sys.executable, "-m", "m7b", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


@pytest.fixture(scope="session")
def tiny_release_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic release made once per session; copy it (tiny_release) before changing it."""
    return synthesize(tmp_path_factory.mktemp("synth") / "mistral-tiny", "tiny", seed=0).path


@pytest.fixture
def tiny_release(tiny_release_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny release, free to change."""
    return Path(shutil.copytree(tiny_release_src, tmp_path / "release" / tiny_release_src.name))


@pytest.fixture(scope="session")
def mixtral_tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny mixture-of-experts release (4 experts, 2 per token, full attention) shipping consolidated.00.pth."""
    return synthesize(tmp_path_factory.mktemp("synth") / "mixtral-tiny", "mixtral-tiny", seed=0).path


@pytest.fixture(scope="session")
def mixtral_tiny_st_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same release shipping consolidated.safetensors (as Mixtral 8x22B does): the same tensors."""
    folder = tmp_path_factory.mktemp("synth") / "mixtral-tiny-st"
    return synthesize(folder, "mixtral-tiny", seed=0, checkpoint_format="safetensors").path


@pytest.fixture
def mixtral_tiny(mixtral_tiny_src: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny mixture-of-experts release, free to change."""
    return Path(shutil.copytree(mixtral_tiny_src, tmp_path / "release" / mixtral_tiny_src.name))
