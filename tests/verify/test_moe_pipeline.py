"""Both checkpoint formats a Mistral torrent ships (`consolidated.00.pth`, `consolidated.safetensors`) carried
through verify → convert (native and Hugging Face Mixtral) → run, on the tiny mixture-of-experts release; the hf
folder loads in transformers' own MixtralForCausalLM offline with the runtime's logits (float32, 1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from m7b.runtime.loader import load_runtime
from m7b.store import Store
from m7b.verify.convert import convert_release
from m7b.verify.converted import check_layout
from m7b.verify.release import verify

FORMATS = ["mixtral_tiny_src", "mixtral_tiny_st_src"]


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, 32000, (1, n), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = 1
    return ids


def _logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = load_runtime(folder, torch.device("cpu"), torch.float32).model
    model.setup_caches(1, ids.shape[1])
    with torch.inference_mode():
        return model(ids, torch.arange(ids.shape[1]))[0]


@pytest.mark.slow
@pytest.mark.parametrize("release", FORMATS)
def test_verify_convert_run_for_both_checkpoint_formats(request, release, m7b_home, tmp_path) -> None:
    src: Path = request.getfixturevalue(release)
    report = verify(str(src), Store.from_env()).report  # a bare folder: nothing binds it (release create does)
    checkpoint = [f for f in report.findings if f.check == "checkpoint"]
    failed = {f.check for f in report.findings if f.status.value not in ("ok", "note")}
    assert failed == {"binding"}, [str(f) for f in report.findings]
    assert checkpoint[0].status.value == "ok"
    assert (
        checkpoint
        and "41 tensors" in checkpoint[0].message
        and "keys and shapes as params.json implies" in (checkpoint[0].message)
    )
    ids = _ids(48, seed=1)
    ref = _logits(src, ids)
    native = convert_release(src, tmp_path / "native", "native").out
    placed, findings = check_layout(native, "native")
    assert placed is not None and len(placed) == 41, findings
    assert torch.equal(_logits(native, ids), ref)  # the same bytes, the same logits
    hf = convert_release(src, tmp_path / "hf", "hf").out
    placed, findings = check_layout(hf, "hf")
    assert placed is not None and len(placed) == 41, findings
    config = json.loads((hf / "config.json").read_text())
    assert config["architectures"] == ["MixtralForCausalLM"] and config["num_local_experts"] == 4
    assert config["sliding_window"] is None and config["rope_theta"] == 1e6
    names = (
        set(json.loads((hf / "model.safetensors.index.json").read_text())["weight_map"])
        if (hf / "model.safetensors.index.json").is_file()
        else None
    )
    if names is None:
        from safetensors import safe_open

        with safe_open(str(hf / "model.safetensors"), "pt") as f:
            names = set(f.keys())  # noqa: SIM118
    assert "model.layers.1.block_sparse_moe.gate.weight" in names
    assert "model.layers.0.block_sparse_moe.experts.3.w2.weight" in names


@pytest.mark.slow
def test_the_hf_mixtral_folder_loads_in_transformers_with_the_runtimes_logits(
    mixtral_tiny_st_src, tmp_path, monkeypatch
) -> None:
    from transformers import MixtralForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    hf = convert_release(mixtral_tiny_st_src, tmp_path / "hf", "hf").out
    model = MixtralForCausalLM.from_pretrained(hf, dtype=torch.float32, local_files_only=True).eval()
    assert model.config.sliding_window is None and model.config.num_local_experts == 4
    ids = _ids(64, seed=5)
    with torch.inference_mode():
        ref = model(ids).logits[0]
    assert (_logits(mixtral_tiny_st_src, ids) - ref).abs().max().item() <= 1e-4
