"""Checks against params.json cost what the files hold: a few bytes declaring 10^7 layers beside a small checkpoint
are a mismatch found by counting, before any per-layer expectation is built."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from m7b.errors import MismatchError
from m7b.verify.check import verify_release
from m7b.verify.checkpoint import check_tensors
from m7b.verify.checkpoint_index import index_checkpoint
from m7b.verify.convert import convert_release
from m7b.verify.findings import Status

LAYERS = 10**7


def _declare_layers(root: Path, n_layers: int) -> None:
    params = json.loads((root / "params.json").read_text())
    (root / "params.json").write_text(json.dumps({**params, "n_layers": n_layers}))


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_tensor_count_is_compared_before_shapes_are_built(tiny_release: Path) -> None:
    from m7b.manifests.architecture import load_params

    _declare_layers(tiny_release, LAYERS)
    arch = load_params(tiny_release / "params.json")
    records = index_checkpoint(tiny_release / "consolidated.00.pth")
    result = []
    peak = _peak_bytes(lambda: result.append(check_tensors(records, arch)))
    assert not result[0].ok
    assert f"{len(records)} tensors" in result[0].problems()[0] and f"{3 + 9 * LAYERS:,}" in result[0].problems()[0]
    assert peak < 16 << 20  # a per-layer dict of 9e7 keys would take gigabytes
    assert arch.parameter_count() > 0  # closed form, no per-layer dict either


@pytest.mark.slow
def test_verify_reports_the_count_mismatch(tiny_release: Path) -> None:
    _declare_layers(tiny_release, LAYERS)
    report = verify_release(tiny_release)
    bad = [f for f in report.findings if f.check == "checkpoint" and f.status == Status.MISMATCH]
    assert bad and "params.json implies" in bad[0].message and report.exit_code == 5


def test_convert_refuses_before_writing(tiny_release: Path, tmp_path: Path) -> None:
    _declare_layers(tiny_release, LAYERS)
    with pytest.raises(MismatchError, match="tensors"):
        convert_release(tiny_release, tmp_path / "out", "native")
    assert not (tmp_path / "out").exists()


def test_runs_shape_check_refuses_by_count(tiny_release: Path) -> None:
    from m7b.manifests.architecture import load_params
    from m7b.runtime.weights import check_shapes, load_state_dict

    _declare_layers(tiny_release, LAYERS)
    state, path = load_state_dict(tiny_release)
    with pytest.raises(MismatchError, match="params.json implies"):
        check_shapes(load_params(tiny_release / "params.json"), state, path)
