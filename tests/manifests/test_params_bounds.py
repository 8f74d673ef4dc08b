"""params.json values that parse as JSON but no model can have are refused as invalid input (exit 4), naming the
field: non-ASCII or huge digit strings, zero, a window below 2, numbers past the documented bounds, NaN/inf,
nesting that would exhaust the parser, and mixture-of-experts blocks the runtime cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from real_params import REAL

from m7b.errors import InvalidInputError
from m7b.manifests.architecture import MAX_INT_FIELD, MAX_PARAMS_BYTES, load_params


def write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "params.json"
    path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sliding_window", "\uff14\uff10\uff19\uff16", "ASCII digits"),  # fullwidth 4096: isdigit() is true
        ("sliding_window", "\u0664\u0660\u0669\u0666", "ASCII digits"),  # Arabic-Indic 4096
        ("sliding_window", "\u00b2", "ASCII digits"),  # superscript two: isdigit() true, int() fails
        ("sliding_window", "9" * 5000, "at most"),
        ("sliding_window", "0", "at least 2"),
        ("sliding_window", 1, "at least 2"),
        ("sliding_window", 10**18, "at most"),
        ("n_layers", 10**8, "at most"),
        ("vocab_size", "32000", "must be an integer"),
        ("dim", 10**400, "at most"),
        ("dim", 0, "at least 1"),
        ("norm_eps", float("nan"), "finite"),
        ("norm_eps", float("inf"), "finite"),
        ("norm_eps", 10**400, "finite"),
        ("norm_eps", 2.0, "below 1"),
        ("rope_theta", float("nan"), "finite"),
        ("rope_theta", float("-inf"), "finite"),
        ("rope_theta", 1e300, "at most"),
    ],
)
def test_out_of_bounds_values_are_invalid_input(tmp_path: Path, field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        load_params(write(tmp_path, json.dumps({**REAL, field: value})))
    assert field in str(info.value) and message in str(info.value)
    assert info.value.exit_code == 4


def test_deep_nesting_is_invalid_input_not_a_recursion_error(tmp_path: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_params(write(tmp_path, json.dumps({**REAL, "extra": 0}).replace("0}", deep + "}")))


def test_a_5000_digit_number_is_invalid_input(tmp_path: Path) -> None:
    text = json.dumps(REAL).replace('"head_dim": 128', '"head_dim": 1' + "0" * 5000)
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_params(write(tmp_path, text))


def test_a_params_file_past_the_size_bound_is_not_read(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({**REAL, "pad": "x" * MAX_PARAMS_BYTES}))
    with pytest.raises(InvalidInputError, match="bytes"):
        load_params(path)


def test_largest_allowed_value_is_accepted(tmp_path: Path) -> None:
    arch = load_params(write(tmp_path, json.dumps({**REAL, "sliding_window": str(MAX_INT_FIELD)})))
    assert arch.sliding_window == MAX_INT_FIELD


def test_mixtral_params_read_as_a_mixture_of_experts_with_full_attention(tmp_path: Path) -> None:
    mixtral = {k: v for k, v in REAL.items() if k != "sliding_window"}
    mixtral["moe"] = {"num_experts_per_tok": 2, "num_experts": 8}
    arch = load_params(write(tmp_path, json.dumps(mixtral)))
    assert arch.moe is not None and (arch.moe.num_experts, arch.moe.num_experts_per_tok) == (8, 2)
    assert arch.sliding_window is None and arch.full_attention and arch.attention_window == 32_768
    assert arch.effective_rope_theta == 1e6  # mistral-inference's default without a window
    assert arch.tensor_count == 3 + 32 * (7 + 3 * 8)
    assert round(arch.parameter_count() / 1e9, 1) == 46.7 and round(arch.active_parameter_count() / 1e9, 1) == 12.9
    assert load_params(write(tmp_path, json.dumps(REAL))).effective_rope_theta == 10000.0  # 7B keeps 1e4
    assert load_params(write(tmp_path, json.dumps({**mixtral, "max_seq_len": 65536}))).max_positions == 65536


@pytest.mark.parametrize("bad", [0, -1, 1 << 40, "65536", 1.5, True])
def test_a_bad_max_seq_len_is_invalid_input(tmp_path: Path, bad: object) -> None:
    with pytest.raises(InvalidInputError, match="max_seq_len"):
        load_params(write(tmp_path, json.dumps({**REAL, "max_seq_len": bad})))


@pytest.mark.parametrize("moe", [[], {"num_experts": 8}, {"num_experts": 2, "num_experts_per_tok": 3}, "yes"])
def test_a_malformed_moe_block_is_invalid_input(tmp_path: Path, moe: object) -> None:
    with pytest.raises(InvalidInputError, match="moe"):
        load_params(write(tmp_path, json.dumps({**REAL, "moe": moe})))


@pytest.mark.slow
@pytest.mark.parametrize(
    "change",
    [{"norm_eps": float("nan")}, {"rope_theta": float("nan")}, {"sliding_window": 1}, {"sliding_window": 10**18}],
)
def test_run_and_smoke_refuse_the_same_params_as_verify(cli, m7b_home, tiny_release: Path, change: dict) -> None:
    params = json.loads((tiny_release / "params.json").read_text())
    (tiny_release / "params.json").write_text(json.dumps({**params, **change}))  # json writes NaN as NaN
    field = next(iter(change))
    for command in (("run", tiny_release, "-p", "hi", "--device", "cpu"), ("smoke", tiny_release, "--device", "cpu")):
        result = cli(*command)
        assert result.code == 4 and field in result.stderr, (command, result.stderr)
