"""An empty, truncated or garbage tokenizer.model is invalid input (exit 4) naming the file — in convert (both
layouts, before anything is written) and in run — never a raw sentencepiece or protobuf exception."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from m7b.errors import InvalidInputError
from m7b.runtime.tokenizer import Tokenizer
from m7b.verify import hf_tokenizer
from m7b.verify.convert import convert_release

BAD = {
    "empty": lambda real: b"",
    "truncated": lambda real: real[: len(real) // 2],
    "first 100 bytes": lambda real: real[:100],
    "garbage": lambda real: os.urandom(4096),
}


@pytest.fixture(params=list(BAD), ids=list(BAD))
def bad_tokenizer(request: pytest.FixtureRequest, tiny_release: Path) -> Path:
    path = tiny_release / "tokenizer.model"
    path.write_bytes(BAD[request.param](path.read_bytes()))
    return path


def test_the_hf_builder_and_the_runtime_name_the_file(bad_tokenizer: Path) -> None:
    for load in (hf_tokenizer.build, Tokenizer):
        with pytest.raises(InvalidInputError) as info:
            load(bad_tokenizer)
        assert str(bad_tokenizer) in str(info.value) and info.value.exit_code == 4


@pytest.mark.parametrize("layout", ["hf", "native"])
def test_convert_refuses_before_writing(bad_tokenizer: Path, tmp_path: Path, layout: str) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    with pytest.raises(InvalidInputError, match="tokenizer.model"):
        convert_release(bad_tokenizer.parent, outs / layout, layout)
    assert list(outs.iterdir()) == []


@pytest.mark.slow
def test_cli_convert_and_run_exit_4(cli, m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    (tiny_release / "tokenizer.model").write_bytes(b"")
    convert = cli("convert", tiny_release, "--to", "hf", "--out", tmp_path / "hf")
    assert convert.code == 4 and "tokenizer.model" in convert.stderr and "internal error" not in convert.stderr
    run = cli("run", tiny_release, "-p", "hi", "--device", "cpu")
    assert run.code == 4 and "tokenizer.model" in run.stderr
