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
