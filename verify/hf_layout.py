"""The Hugging Face layout of a Mistral checkpoint: key names, the rotary permutation of wq/wk, config.json,
tokenizer files and the model card (written with huggingface_hub). A mixture of experts is `MixtralForCausalLM`'s
layout: `model.layers.N.block_sparse_moe.gate.weight` and `…block_sparse_moe.experts.E.w1/w2/w3.weight` (the names
transformers' own converter reads from the hub's Mixtral checkpoints)."""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from m7b.manifests.architecture import Architecture


class Rows(Protocol):
    """A 2-D torch tensor or numpy array: what permute uses of them (each method gives one of the same kind)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def reshape(self, dim: int, /, *dims: int) -> Rows: ...

    def swapaxes(self, axis0: int, axis1: int, /) -> Rows: ...


_LAYER = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^feed_forward\.(gate\.weight|experts\.\d+\.w[123]\.weight)$")
_LAYER_KEYS = {
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}
_TOP_KEYS = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def hf_key(key: str) -> str:
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    m = _LAYER.match(key)
    if m and (e := _EXPERT.match(m.group(2))):
        return f"model.layers.{m.group(1)}.block_sparse_moe.{e.group(1)}"
    if not m or m.group(2) not in _LAYER_KEYS:
        raise KeyError(f"no Hugging Face name for checkpoint key {key!r}")
    return f"model.layers.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}"


def rotary_heads(key: str, arch: Architecture) -> int | None:
    """How many heads a key's rows are permuted over (wq: n_heads, wk: n_kv_heads), None when not permuted."""
    if key.endswith("attention.wq.weight"):
        return arch.n_heads
    if key.endswith("attention.wk.weight"):
        return arch.n_kv_heads
    return None


def permute(w: Rows, heads: int) -> Rows:
    """Interleaved rotary pairs (Mistral) to half-split rows (Hugging Face), per head."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def unpermute(w: Rows, heads: int) -> Rows:
    rows, cols = w.shape
    return w.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def config(arch: Architecture, dtype: str = "bfloat16") -> dict[str, Any]:
    """config.json for transformers' MistralForCausalLM, or MixtralForCausalLM for a mixture of experts."""
    experts: dict[str, Any] = {}
    if arch.moe is not None:
        experts = {
            "num_local_experts": arch.moe.num_experts,
            "num_experts_per_tok": arch.moe.num_experts_per_tok,
            "output_router_logits": False,
            "router_aux_loss_coef": 0.02,
            "router_jitter_noise": 0.0,
        }
    return experts | {
        "architectures": ["MistralForCausalLM" if arch.moe is None else "MixtralForCausalLM"],
        "model_type": "mistral" if arch.moe is None else "mixtral",
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "hidden_size": arch.dim,
        "initializer_range": 0.02,
        "intermediate_size": arch.hidden_dim,
        "max_position_embeddings": arch.max_positions,
        "num_attention_heads": arch.n_heads,
        "num_hidden_layers": arch.n_layers,
        "num_key_value_heads": arch.n_kv_heads,
        "rms_norm_eps": arch.norm_eps,
        "rope_theta": arch.effective_rope_theta,  # none in params.json: 10000 with a window (v0.1), else 1e6
        "sliding_window": arch.sliding_window,  # null: full attention
        "tie_word_embeddings": False,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
        "vocab_size": arch.vocab_size,
    }


def generation_config() -> dict[str, Any]:
    return {"bos_token_id": 1, "eos_token_id": 2}


def tokenizer_files() -> dict[str, dict[str, Any]]:
    """Files that let transformers load the sentencepiece tokenizer.model as a Llama tokenizer."""
    return {
        "tokenizer_config.json": {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": None,
            "clean_up_tokenization_spaces": False,
            "legacy": True,
            "model_max_length": 32768,
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
        },
        "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
    }


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def model_tags(arch: Architecture) -> list[str]:
    """The tags m7b's model cards carry (the hf card's metadata; the GGUF's general.tags, as llama.cpp's converter
    copies them from that card)."""
    return ["mistral", "m7b"] if arch.moe is None else ["mixtral", "moe", "m7b"]


def model_card(name: str, source_sha256: str | None, arch: Architecture, source: str = "consolidated.00.pth") -> str:
    """README.md whose metadata says `license: apache-2.0`, built with huggingface_hub's ModelCard."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        license="apache-2.0",
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=model_tags(arch),
    )
    window = f"sliding window {arch.sliding_window}" if arch.sliding_window is not None else "full attention"
    experts = f", a mixture of experts ({arch.moe.describe()})" if arch.moe else ""
    body = (
        f"# {name}\n\n"
        f"Converted by m7b from the torrent release's `{source}` "
        f"({'sha256 ' + source_sha256 if source_sha256 else 'sha256 not recorded'}) to the Hugging Face layout: "
        "renamed keys, wq/wk rows permuted for the rotary layout of "
        f"`{config(arch)['architectures'][0]}`, tensors unchanged bit for bit. {arch.n_layers} layers, dim "
        f"{arch.dim}, {arch.n_heads} heads ({arch.n_kv_heads} key/value heads){experts}, {window}, rope_theta "
        f"{arch.effective_rope_theta:g}.\n\nLicense: Apache-2.0 (see LICENSE). `SHA256SUMS` lists every file.\n"
    )
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return str(card)
