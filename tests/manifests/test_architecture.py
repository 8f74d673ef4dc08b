from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_params import REAL

from m7b.errors import InvalidInputError, NotFoundError
from m7b.manifests.architecture import load_params


def write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "params.json"
    path.write_text(content)
    return path


def test_real_params_give_291_tensors(tmp_path: Path) -> None:
    arch = load_params(write(tmp_path, json.dumps(REAL)))
    shapes = arch.tensor_shapes()
    assert len(shapes) == 291
    assert shapes["layers.0.attention.wk.weight"] == (1024, 4096)
    assert shapes["layers.31.feed_forward.w2.weight"] == (4096, 14336)


def test_sliding_window_as_an_integer_string_is_accepted(tmp_path: Path) -> None:
    assert load_params(write(tmp_path, json.dumps({**REAL, "sliding_window": "4096"}))).sliding_window == 4096


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps([1, 2]), "expected a JSON object"),
        (json.dumps({**REAL, "sliding_window": "4k"}), "'sliding_window' must be an integer, found the string '4k'"),
        (json.dumps({**REAL, "dim": 4096.0}), "'dim' must be an integer, found float"),
        (json.dumps({**REAL, "n_kv_heads": 5}), "must be a multiple of n_kv_heads"),
        (json.dumps({k: v for k, v in REAL.items() if k != "vocab_size"}), "missing field(s) vocab_size"),
    ],
)
def test_bad_params_are_refused_clearly(tmp_path: Path, params: str, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_params(write(tmp_path, params))
    assert message in str(info.value)


def test_missing_params(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="params.json not found"):
        load_params(tmp_path / "params.json")


def test_moe_shapes_counts_and_active_parameters_agree_with_the_table() -> None:
    import math

    from m7b.synth import PRESETS

    for name in ("mixtral-tiny", "mixtral-small", "mixtral-8x7b", "tiny", "mistral-7b"):
        arch = PRESETS[name]
        shapes = arch.tensor_shapes()
        assert len(shapes) == arch.tensor_count
        assert sum(math.prod(s) for s in shapes.values()) == arch.parameter_count()
        if arch.moe is None:
            assert arch.active_parameter_count() == arch.parameter_count()
            continue
        unchosen = arch.moe.num_experts - arch.moe.num_experts_per_tok
        expert = sum(math.prod(s) for k, s in shapes.items() if k.startswith("layers.0.feed_forward.experts.0."))
        assert arch.active_parameter_count() == arch.parameter_count() - arch.n_layers * unchosen * expert
        assert shapes["layers.0.feed_forward.gate.weight"] == (arch.moe.num_experts, arch.dim)
        assert "layers.0.feed_forward.w1.weight" not in shapes


def test_params_round_trip_keeps_moe_max_seq_len_and_a_missing_window(tmp_path: Path) -> None:
    import json

    from m7b.manifests.architecture import load_params
    from m7b.synth import PRESETS

    arch = PRESETS["mixtral-8x7b"]
    path = tmp_path / "params.json"
    path.write_text(json.dumps({**arch.to_params(), "max_seq_len": 65536}))
    again = load_params(path)
    assert again.moe == arch.moe and again.max_seq_len == 65536 and again.sliding_window is None
    assert "sliding_window" not in again.to_params() and again.to_params()["moe"] == {
        "num_experts": 8,
        "num_experts_per_tok": 2,
    }
