"""The torch-free checkpoint index convert streams from: the same bytes torch.load gives, for every way torch.save
lays tensors out, and the same refusals as the inspection (even were the inspection bypassed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from verify_helpers import hostile_pickle, rewrite_zip

import m7b.verify.checkpoint_index as index_module
from m7b.errors import MismatchError, UnsafeError
from m7b.verify.checkpoint_index import index_checkpoint, mapped, tensor_bytes
from m7b.verify.checkpoint_load import load_checkpoint
from m7b.verify.convert import convert_release

PTH = "consolidated.00.pth"
PKL = "consolidated/data.pkl"


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def _same_as_torch(path: Path) -> int:
    records = index_checkpoint(path, owned=False)
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    assert list(records) == list(state)
    with mapped(path) as file:
        for key, record in records.items():
            t = state[key]
            assert (record.shape, record.dtype) == (tuple(t.shape), str(t.dtype).removeprefix("torch."))
            assert bytes(tensor_bytes(file.view, record)) == _raw(t), key
    return len(records)


def test_every_layout_torch_save_writes_gives_torch_loads_bytes(tmp_path: Path) -> None:
    """Shared storages, storage offsets, transposed and strided views, scalars, empty tensors, five dtypes."""
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    state = {
        "base": base,
        "transposed": base.t(),
        "rows": base[2:4],
        "column": base[:, 3],
        "every_other": base[::2, 1::3],
        "bf16": torch.randn(5, 7).to(torch.bfloat16),
        "half": torch.randn(3).half(),
        "long": torch.arange(9),
        "empty": torch.empty(0, 4),
        "scalar": torch.tensor(3.5),
        "mask": torch.tensor([True, False, True]),
    }
    torch.save(state, tmp_path / "mixed.pth")
    assert _same_as_torch(tmp_path / "mixed.pth") == len(state)
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "module.pth")  # an OrderedDict with _metadata
    assert _same_as_torch(tmp_path / "module.pth") == 2


def test_the_synthetic_release_indexes_like_torch_loads_it(tiny_release_src: Path) -> None:
    assert _same_as_torch(tiny_release_src / PTH) > 10


@pytest.mark.parametrize("bypassed", [False, True], ids=["inspected", "inspection-bypassed"])
def test_hostile_pickle_is_refused_and_never_runs(
    tiny_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bypassed: bool
) -> None:
    """The index's own unpickler resolves nothing outside the allowlist, so even a pickle the genops walk missed
    cannot import os.system."""
    marker = tmp_path / "pwned"
    rewrite_zip(tiny_release / PTH, {PKL: hostile_pickle(marker, 2)})
    if bypassed:
        monkeypatch.setattr(index_module, "inspect_checkpoint", _uninspected)
    with pytest.raises(UnsafeError, match="system"):
        index_checkpoint(tiny_release / PTH)
    with pytest.raises(UnsafeError):
        convert_release(tiny_release, tmp_path / "out", "native")
    assert not marker.exists() and not (tmp_path / "out").exists()


def _uninspected(path: Path):
    class Bare:
        archive = "consolidated"

    return Bare()


def test_a_record_shorter_than_its_tensor_is_refused(tiny_release: Path, tmp_path: Path) -> None:
    rewrite_zip(tiny_release / PTH, {"consolidated/data/0": b"\0" * 100})
    with pytest.raises(MismatchError, match="reaches past its data record"):
        index_checkpoint(tiny_release / PTH)
    with pytest.raises(MismatchError):
        convert_release(tiny_release, tmp_path / "out", "hf")
    assert not (tmp_path / "out").exists()


def test_convert_of_non_contiguous_tensors_writes_their_values(tiny_release: Path, tmp_path: Path) -> None:
    """A checkpoint torch.save wrote from transposed views converts to the same tensors, bit for bit."""
    from safetensors.torch import load_file

    state = {k: t.clone() for k, t in load_checkpoint(tiny_release / PTH).items()}  # not the mapped file torch.save
    views = {k: (t.t().contiguous().t() if t.dim() == 2 else t.clone()) for k, t in state.items()}
    assert any(not v.is_contiguous() for v in views.values())
    torch.save(views, tiny_release / PTH)
    out = convert_release(tiny_release, tmp_path / "native", "native").out
    loaded = load_file(out / "consolidated.safetensors")
    assert set(loaded) == set(state)
    for key, t in state.items():
        assert torch.equal(loaded[key].view(torch.uint8), t.contiguous().view(torch.uint8)), key
