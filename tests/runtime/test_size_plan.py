"""`run` is honest about size: before loading, the weights' size against the machine's memory and the decode speed
their active bytes allow, measured on this machine; a checkpoint larger than memory is said to read most of its
active experts from disk each token, and the run goes on."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from m7b.runtime.size_plan import SizePlan, plan_size
from m7b.synth import PRESETS

GB = 10**9


def test_mixtral_8x7b_on_a_24_gb_machine_reads_most_active_experts_from_disk() -> None:
    arch = PRESETS["mixtral-8x7b"]
    weights, active = arch.parameter_count() * 2, arch.active_parameter_count() * 2
    assert round(weights / GB, 1) == 93.4 and round(active / GB, 1) == 25.8
    plan = SizePlan(weights, active, 24 * GB, 20 * GB, memory_gbs=30.0, disk_gbs=2.0, device="CPU")
    assert not plan.fits and round(plan.resident_share, 3) == round(20 / 93.4, 3)
    # 21% of 25.8 GB at 30 GB/s plus 79% at 2 GB/s
    expected = 1 / (active * plan.resident_share / 30e9 + active * (1 - plan.resident_share) / 2e9)
    assert abs(plan.estimated_tok_s - expected) < 1e-9
    said = plan.statement()
    assert "do not fit" in said and "79% of each token's active bytes come from disk" in said and "Going on" in said


def test_mistral_7b_on_a_24_gb_machine_fits() -> None:
    arch = PRESETS["mistral-7b"]
    weights = arch.parameter_count() * 2
    plan = SizePlan(weights, arch.active_parameter_count() * 2, 24 * GB, 20 * GB, 30.0, None, "CPU")
    assert plan.fits and abs(plan.estimated_tok_s - 30e9 / weights) < 1e-9
    assert "expect about 2.07 tok/s" in plan.statement()


def test_the_plan_measures_this_machine(mixtral_tiny_src: Path) -> None:
    arch = PRESETS["mixtral-tiny"]
    plan = plan_size(arch, mixtral_tiny_src / "consolidated.00.pth", torch.device("cpu"), None)
    assert plan.weights_bytes == arch.parameter_count() * 2 and plan.active_bytes < plan.weights_bytes
    assert plan.memory_gbs > 0 and plan.memory_bytes >= plan.available_bytes > 0 and plan.fits


def test_run_states_the_size_before_loading(cli_inproc, m7b_home, mixtral_tiny_src) -> None:
    result = cli_inproc("run", str(mixtral_tiny_src), "-p", "Hi", "--max-tokens", "2", "--device", "cpu")
    assert result.code == 0, result.stderr
    assert result.stderr.index("size: weights") < result.stderr.index("loaded in")
    doc = json.loads(
        cli_inproc("run", str(mixtral_tiny_src), "-p", "Hi", "--max-tokens", "2", "--device", "cpu", "--json").stdout
    )
    arch = PRESETS["mixtral-tiny"]
    assert doc["size"]["active_bytes"] == arch.active_parameter_count() * 2 and doc["size"]["fits"] is True
