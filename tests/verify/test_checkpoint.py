"""The checkpoint is inspected before anything is unpickled; bad checkpoints are refused with a clear reason."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from verify_helpers import hostile_pickle, rewrite_zip

from m7b.errors import InvalidInputError, MismatchError, UnsafeError
from m7b.manifests.architecture import load_params
from m7b.torchzip import TensorSpec, write_checkpoint
from m7b.verify.check import verify_release
from m7b.verify.checkpoint import ALLOWED_GLOBALS, check_tensors, inspect_checkpoint, scan_pickle
from m7b.verify.checkpoint_load import load_checkpoint
from m7b.verify.findings import Status

PTH = "consolidated.00.pth"
PKL = "consolidated/data.pkl"


@pytest.mark.parametrize("protocol", [2, 4], ids=["GLOBAL", "STACK_GLOBAL"])
def test_hostile_pickle_is_refused_by_name_and_offset_and_never_runs(
    tiny_release: Path, tmp_path: Path, protocol: int
) -> None:
    marker = tmp_path / "pwned"
    rewrite_zip(tiny_release / PTH, {PKL: hostile_pickle(marker, protocol)})
    with pytest.raises(UnsafeError) as info:
        load_checkpoint(tiny_release / PTH)
    message = str(info.value)
    assert "posix.system" in message or "os.system" in message
    assert "at byte " in message
    report = verify_release(tiny_release)
    assert report.verdict == Status.UNSAFE and report.exit_code == 6
    assert not marker.exists()


@pytest.mark.slow
def test_cli_refuses_hostile_checkpoint_with_exit_6(cli, m7b_home: Path, tiny_release: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    rewrite_zip(tiny_release / PTH, {PKL: hostile_pickle(marker, 2)})
    verify = cli("verify", tiny_release, "--json")
    assert verify.code == 6
    doc = json.loads(verify.stdout)
    unsafe = [f for f in doc["findings"] if f["status"] == "unsafe"]
    assert unsafe and "system" in unsafe[0]["message"] and unsafe[0]["path"] == PTH
    convert = cli("convert", tiny_release, "--to", "native", "--out", tmp_path / "out")
    assert convert.code == 6 and "system" in convert.stderr
    assert not (tmp_path / "out").exists()
    assert not marker.exists()


@pytest.mark.parametrize(
    "target", ["builtins.eval", "builtins.exec", "torch.load", "nosuchmodule.thing", "torch._utils._rebuild_parameter"]
)
def test_only_the_allowlist_passes(target: str) -> None:
    module, name = target.rsplit(".", 1)
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UnsafeError, match=rf"{target.replace('.', '[.]')} at byte 2"):
        scan_pickle(data, "test.pkl")


def test_pickle_opcodes_that_import_without_global_are_refused() -> None:
    inst = b"(ios\nsystem\n(S'true'\ntp0\n."  # INST imports os.system by itself
    with pytest.raises(UnsafeError, match="INST"):
        scan_pickle(inst, "x")
    ext = b"\x80\x02\x82\x01)R."  # EXT1: the copyreg extension registry
    with pytest.raises(UnsafeError, match="EXT1"):
        scan_pickle(ext, "x")


def test_real_torch_save_passes_inspection(tmp_path: Path) -> None:
    path = tmp_path / "saved.pth"
    torch.save({"w": torch.zeros(3, dtype=torch.bfloat16), "b": torch.ones(2)}, path)
    found = {g.name for g in inspect_checkpoint(path).globals}
    assert found <= ALLOWED_GLOBALS and "torch._utils._rebuild_tensor_v2" in found
    assert set(load_checkpoint(path)) == {"w", "b"}


def test_truncated_checkpoint(tiny_release: Path) -> None:
    path = tiny_release / PTH
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MismatchError, match="truncated"):
        load_checkpoint(path)
    report = verify_release(tiny_release)
    assert report.exit_code == 5
    assert any(f.check == "checkpoint" and "truncated" in f.message for f in report.findings)


@pytest.mark.parametrize("change", ["renamed", "missing"])
def test_zip_without_data_pkl(tiny_release: Path, change: str) -> None:
    path = tiny_release / PTH
    if change == "renamed":
        rewrite_zip(path, {}, rename={PKL: "consolidated/weights.pkl"})
    else:
        rewrite_zip(path, {PKL: None})
    with pytest.raises(MismatchError, match="data.pkl"):
        load_checkpoint(path)


def _rewrite_checkpoint(root: Path, change: dict[str, TensorSpec | None], add: list[TensorSpec] = ()) -> None:
    arch = load_params(root / "params.json")
    specs = []
    for key, shape in arch.tensor_shapes().items():
        spec = change.get(key, TensorSpec(key, shape))
        if spec is not None:
            specs.append(spec)
    specs += list(add)
    (root / PTH).unlink()
    write_checkpoint(root / PTH, specs, lambda s: torch.zeros(s.shape, dtype=s.dtype), archive="consolidated")


@pytest.mark.slow
def test_wrong_shape_and_dtype_are_named(tiny_release: Path) -> None:
    _rewrite_checkpoint(
        tiny_release,
        {
            "layers.0.attention.wk.weight": TensorSpec("layers.0.attention.wk.weight", (64, 64)),
            "norm.weight": TensorSpec("norm.weight", (64,), torch.float32),
        },
    )
    report = verify_release(tiny_release)
    assert report.exit_code == 5
    finding = next(f for f in report.findings if f.check == "checkpoint")
    assert "layers.0.attention.wk.weight has shape (64, 64), params.json implies (32, 64)" in finding.message
    assert "norm.weight is float32, expected bfloat16" in finding.message


def test_missing_and_extra_keys_are_named(tiny_release: Path) -> None:
    _rewrite_checkpoint(tiny_release, {"layers.1.ffn_norm.weight": None}, add=[TensorSpec("lora.A", (4, 4))])
    state = load_checkpoint(tiny_release / PTH)
    result = check_tensors(state, load_params(tiny_release / "params.json"))
    assert result.missing == ["layers.1.ffn_norm.weight"] and result.extra == ["lora.A"]
    message = " ".join(result.problems())
    assert "missing key(s) layers.1.ffn_norm.weight" in message and "unexpected key(s) lora.A" in message


@pytest.mark.slow
def test_params_json_with_a_wrong_type(tiny_release: Path) -> None:
    params = json.loads((tiny_release / "params.json").read_text())
    params["n_heads"] = "4"
    (tiny_release / "params.json").write_text(json.dumps(params))
    report = verify_release(tiny_release)
    assert report.exit_code == 4
    finding = next(f for f in report.findings if f.check == "params")
    assert "'n_heads' must be an integer" in finding.message


def test_sliding_window_as_integer_string_is_accepted_other_strings_refused(tiny_release: Path) -> None:
    params = json.loads((tiny_release / "params.json").read_text())
    params["sliding_window"] = "16"
    (tiny_release / "params.json").write_text(json.dumps(params))
    assert load_params(tiny_release / "params.json").sliding_window == 16
    params["sliding_window"] = "16k"
    (tiny_release / "params.json").write_text(json.dumps(params))
    with pytest.raises(InvalidInputError, match="sliding_window"):
        load_params(tiny_release / "params.json")


def test_hostile_pickle_fixture_would_really_run(tmp_path: Path) -> None:
    """The hostile pickle is a real threat (so the tests above prove something): unpickled, it runs."""
    marker = tmp_path / "ran"
    pickle.loads(hostile_pickle(marker, 2))  # noqa: S301 — deliberately, on our own bytes
    assert marker.exists()
