"""Fixtures of verify's suite: releases in an isolated store, bound to their torrent and manifest."""

from __future__ import annotations

from pathlib import Path

import pytest

from m7b.synth import synthesize


@pytest.fixture(scope="session")
def small_release_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 38 MB synthetic release, made once per session (never change it: copy it)."""
    return synthesize(tmp_path_factory.mktemp("synth-small") / "mistral-small", "small", seed=1).path


@pytest.fixture(scope="session")
def converted_tiny(tmp_path_factory: pytest.TempPathFactory, tiny_release_src: Path) -> dict[str, Path]:
    """The tiny release converted to both layouts once per session (hf in 3 shards)."""
    from m7b.verify.convert import convert_release

    base = tmp_path_factory.mktemp("converted")
    return {
        layout: convert_release(tiny_release_src, base / layout, layout, max_shard_size=3_000_000).out
        for layout in ("native", "hf")
    }
