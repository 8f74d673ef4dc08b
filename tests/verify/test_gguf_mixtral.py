"""A Mixtral's GGUF against llama.cpp itself: the experts stacked per layer as `convert_hf_to_gguf.py` stacks them
(every tensor equal to the converter's from m7b's hf layout), the blocks `llama-quantize` writes (its 8-expert rule
included: attn_k and attn_v at q8_0 in a q4_0 file), the expert counts in the metadata, and llama.cpp's own mixture
of experts giving m7b's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
from llamacpp import (
    assert_converters_file,
    assert_llama_cpp_logits,
    assert_quantizers_file,
    convert_hf,
    kv,
    m7b_outputs,
    quantize,
    require_tools,
)

from m7b.synth import synthesize
from m7b.verify.convert import convert_release

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tools() -> Path:
    return require_tools()


@pytest.fixture(scope="module")
def moe_outputs(mixtral_tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """mixtral-tiny (4 experts, 2 per token, no window) in m7b's hf and four GGUF layouts."""
    return m7b_outputs(mixtral_tiny_src, tmp_path_factory.mktemp("gguf-moe"), "mt", "cd" * 20)


@pytest.mark.parametrize("outtype", ["bf16", "f16"])
def test_each_stacked_expert_tensor_equals_the_converters(tools, moe_outputs, tmp_path, outtype) -> None:
    ref = convert_hf(tools, moe_outputs["hf"], tmp_path / "ref.gguf", outtype)
    theirs = assert_converters_file(moe_outputs[outtype], ref)
    assert theirs["blk.0.ffn_gate_exps.weight"][:2] == (outtype.upper(), (64, 128, 4))  # gguf order: cols, rows, E
    assert theirs["blk.0.ffn_gate_inp.weight"][0] == "F32"  # the router stays float32
    mine = kv(moe_outputs[outtype])
    assert mine["llama.expert_count"][1] == 4 and mine["llama.expert_used_count"][1] == 2
    assert "m7b.sliding_window" not in mine  # no window: nothing llama.cpp cannot express


@pytest.mark.parametrize("file_type", ["q8_0", "q4_0"])
def test_each_expert_block_equals_llama_quantizes(tools, moe_outputs, tmp_path, file_type) -> None:
    assert_quantizers_file(
        moe_outputs[file_type], quantize(tools, moe_outputs["bf16"], tmp_path / "ref.gguf", file_type)
    )


def test_eight_experts_get_llama_quantizes_q8_0_attention_keys_and_values(tools, tmp_path) -> None:
    """llama-quantize gives attn_k and attn_v q8_0 in a q4_0 file of a model of exactly 8 experts (Mixtral's)."""
    src = synthesize(tmp_path / "ms", "mixtral-small", seed=3).path
    bf16 = convert_release(src, tmp_path / "bf16", "gguf-bf16", name="ms").out / "ms-BF16.gguf"
    ours = convert_release(src, tmp_path / "q4", "gguf-q4_0", name="ms").out / "ms-Q4_0.gguf"
    theirs = assert_quantizers_file(ours, quantize(tools, bf16, tmp_path / "ref.gguf", "q4_0"))
    assert theirs["blk.0.attn_k.weight"][0] == theirs["blk.0.attn_v.weight"][0] == "Q8_0"
    assert theirs["blk.0.attn_q.weight"][0] == theirs["blk.0.ffn_down_exps.weight"][0] == "Q4_0"


def test_llama_cpp_runs_m7bs_mixtral_gguf_with_m7bs_logits(tools, moe_outputs, mixtral_tiny_src) -> None:
    """llama.cpp's mixture of experts on m7b's bf16 file: teacher-forced logits within 2% of the largest of m7b's
    (float32), greedy tokens the same where m7b's top two are not a near-tie (full attention on both sides)."""
    assert_llama_cpp_logits(tools, moe_outputs["bf16"], mixtral_tiny_src, seed=11, n_ctx=64)
