"""Each tensor of a checkpoint must own exactly its bytes: a tiny file whose tensors are stride-0 views of one
element, views sharing one storage, a tensor at a storage offset or with gaps between its elements, or a record
shorter than its storage, is a mismatch (exit 5) naming the tensor — in verify, convert, run's loader and
`release create` — before anything the size of the declared tensors is allocated or written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from verify_helpers import rewrite_zip

from m7b.errors import MismatchError
from m7b.manifests.architecture import load_params
from m7b.verify.check import verify_release
from m7b.verify.checkpoint_index import index_checkpoint
from m7b.verify.checkpoint_load import load_checkpoint
from m7b.verify.convert import convert_release
from m7b.verify.findings import Status

PTH = "consolidated.00.pth"


def _zeros(shape: tuple[int, ...]) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.bfloat16)


def stride_zero(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    one = _zeros((1,))
    return {k: one.as_strided(s, (0,) * len(s)) for k, s in shapes.items()}


def shared_storage(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {k: _zeros(s) for k, s in shapes.items()}
    state["layers.0.attention.wv.weight"] = state["layers.0.attention.wk.weight"]  # same shape: one storage
    return state


def storage_offset(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {k: _zeros(s) for k, s in shapes.items()}
    s = shapes["norm.weight"]
    state["norm.weight"] = _zeros((s[0] + 1,))[1:]
    return state


def gapped(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    state = {k: _zeros(s) for k, s in shapes.items()}
    rows, cols = shapes["layers.1.attention.wo.weight"]
    state["layers.1.attention.wo.weight"] = _zeros((rows, 2 * cols))[:, ::2]
    return state


HOSTILE: dict[str, tuple[Callable[[dict[str, tuple[int, ...]]], dict[str, torch.Tensor]], str, str]] = {
    "stride-0 views of one element": (stride_zero, "tok_embeddings.weight", "strides"),
    "two tensors on one storage": (shared_storage, "layers.0.attention.wv.weight", "shares"),
    "a storage offset": (storage_offset, "norm.weight", "offset"),
    "gaps between elements": (gapped, "layers.1.attention.wo.weight", "strides"),
}


@pytest.fixture(params=list(HOSTILE), ids=list(HOSTILE))
def hostile_release(request: pytest.FixtureRequest, tiny_release: Path) -> tuple[Path, str, str]:
    build, tensor, word = HOSTILE[request.param]
    torch.save(build(load_params(tiny_release / "params.json").tensor_shapes()), tiny_release / PTH)
    return tiny_release, tensor, word


def test_the_index_refuses_tensors_that_do_not_own_their_bytes(hostile_release: tuple[Path, str, str]) -> None:
    root, tensor, word = hostile_release
    with pytest.raises(MismatchError) as info:
        index_checkpoint(root / PTH)
    assert tensor in str(info.value) and word in str(info.value) and info.value.exit_code == 5


def test_runs_loader_refuses_them_before_torch_load(hostile_release: tuple[Path, str, str]) -> None:
    root, tensor, _ = hostile_release
    with pytest.raises(MismatchError, match=tensor.replace(".", "[.]")):
        load_checkpoint(root / PTH)


@pytest.mark.slow
def test_verify_reports_a_mismatch_naming_the_tensor(hostile_release: tuple[Path, str, str]) -> None:
    root, tensor, _ = hostile_release
    report = verify_release(root)
    bad = [f for f in report.findings if f.check == "checkpoint" and f.status == Status.MISMATCH]
    assert bad and tensor in bad[0].message
    assert report.exit_code == 5


def test_convert_refuses_and_writes_nothing(hostile_release: tuple[Path, str, str], tmp_path: Path) -> None:
    root, tensor, _ = hostile_release
    outs = tmp_path / "outs"
    outs.mkdir()
    with pytest.raises(MismatchError, match=tensor.replace(".", "[.]")):
        convert_release(root, outs / "native", "native")
    assert list(outs.iterdir()) == []


def test_a_record_shorter_than_its_storage_is_refused(tiny_release: Path) -> None:
    rewrite_zip(tiny_release / PTH, {"consolidated/data/20": b"\0" * 2})  # norm.weight's record, cut short
    with pytest.raises(MismatchError, match="record"):
        index_checkpoint(tiny_release / PTH)
    with pytest.raises(MismatchError):
        load_checkpoint(tiny_release / PTH)


@pytest.mark.slow
def test_cli_verify_convert_and_run_exit_5_on_stride_zero_views(
    cli, m7b_home: Path, tiny_release: Path, tmp_path: Path
) -> None:
    torch.save(stride_zero(load_params(tiny_release / "params.json").tensor_shapes()), tiny_release / PTH)
    assert (tiny_release / PTH).stat().st_size < 64 << 10  # a few KB standing for 8 MB of tensors
    verify = cli("verify", tiny_release, "--json")
    assert verify.code == 5, verify.stderr
    assert any("tok_embeddings.weight" in f["message"] for f in json.loads(verify.stdout)["findings"])
    convert = cli("convert", tiny_release, "--to", "native", "--out", tmp_path / "out")
    assert convert.code == 5 and "tok_embeddings.weight" in convert.stderr
    assert not (tmp_path / "out").exists()
    run = cli("run", tiny_release, "--prompt", "hi", "--max-tokens", "1", "--device", "cpu")
    assert run.code == 5 and "tok_embeddings.weight" in run.stderr


def test_a_later_convert_removes_what_a_killed_one_left(tiny_release_src: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    outs = tmp_path / "outs"
    outs.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = outs / f".native.{int(dead.stdout)}.abc123.partial"  # the name atomic_dir gives, of a finished process
    left.mkdir()
    (left / "consolidated.safetensors").write_bytes(b"\0" * 4096)
    live = outs / f".native.{__import__('os').getpid()}.def456.partial"  # a convert still running: kept
    live.mkdir()
    convert_release(tiny_release_src, outs / "native", "native")
    assert not left.exists() and live.is_dir()
    assert sorted(p.name for p in outs.iterdir()) == sorted(["native", live.name])
