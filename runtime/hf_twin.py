"""transformers' MistralForCausalLM (or MixtralForCausalLM for a mixture of experts) on the same weights: the
independent implementation the runtime is checked against (tests, `m7b smoke`, the benchmarks). The Hugging Face
state dict is built here from the checkpoint (renamed keys, wq/wk rows permuted per head; a Mixtral's experts
stacked as transformers 5 holds them, w1|w3 as `gate_up_proj`, w2 as `down_proj`). transformers is imported only
when a twin is built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .args import ModelArgs

if TYPE_CHECKING:
    from transformers import MistralForCausalLM, MixtralForCausalLM


def permute_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Interleaved-pair rotary layout (the checkpoint) to the rotate-half layout (Hugging Face), per head."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def hf_state_dict(state: dict[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    out = {
        "model.embed_tokens.weight": state["tok_embeddings.weight"],
        "model.norm.weight": state["norm.weight"],
        "lm_head.weight": state["output.weight"],
    }
    for i in range(args.n_layers):
        src, dst = f"layers.{i}.", f"model.layers.{i}."
        out[dst + "self_attn.q_proj.weight"] = permute_rows(state[src + "attention.wq.weight"], args.n_heads)
        out[dst + "self_attn.k_proj.weight"] = permute_rows(state[src + "attention.wk.weight"], args.n_kv_heads)
        out[dst + "self_attn.v_proj.weight"] = state[src + "attention.wv.weight"]
        out[dst + "self_attn.o_proj.weight"] = state[src + "attention.wo.weight"]
        if args.moe is None:
            out[dst + "mlp.gate_proj.weight"] = state[src + "feed_forward.w1.weight"]
            out[dst + "mlp.down_proj.weight"] = state[src + "feed_forward.w2.weight"]
            out[dst + "mlp.up_proj.weight"] = state[src + "feed_forward.w3.weight"]
        else:
            experts = [f"{src}feed_forward.experts.{e}." for e in range(args.moe.num_experts)]
            out[dst + "mlp.gate.weight"] = state[src + "feed_forward.gate.weight"]
            out[dst + "mlp.experts.gate_up_proj"] = torch.stack(
                [torch.cat([state[e + "w1.weight"], state[e + "w3.weight"]]) for e in experts]
            )
            out[dst + "mlp.experts.down_proj"] = torch.stack([state[e + "w2.weight"] for e in experts])
        out[dst + "input_layernorm.weight"] = state[src + "attention_norm.weight"]
        out[dst + "post_attention_layernorm.weight"] = state[src + "ffn_norm.weight"]
    return out


def hf_model(
    state: dict[str, torch.Tensor],
    args: ModelArgs,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
) -> MistralForCausalLM | MixtralForCausalLM:
    """A MistralForCausalLM (a MixtralForCausalLM for a mixture of experts) holding `state` (checkpoint key names),
    with the same window (none: full attention) and the rope_theta the runtime uses."""
    from transformers import MistralConfig, MistralForCausalLM, MixtralConfig, MixtralForCausalLM

    common: dict[str, Any] = {  # transformers 5 takes rope_theta and attn_implementation as keywords
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "intermediate_size": args.hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "rms_norm_eps": args.norm_eps,
        "sliding_window": args.sliding_window,  # None: full attention
        "rope_theta": args.effective_rope_theta,
        "max_position_embeddings": args.max_positions,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "attn_implementation": attn_implementation,
    }
    model: MistralForCausalLM | MixtralForCausalLM
    config: MistralConfig | MixtralConfig
    with torch.device("meta"):
        if args.moe is None:
            dense = MistralConfig(**common)
            model, config = MistralForCausalLM(dense), dense
        else:
            experts: dict[str, Any] = {
                "num_local_experts": args.moe.num_experts,
                "num_experts_per_tok": args.moe.num_experts_per_tok,
            }
            mixtral = MixtralConfig(**experts, **common)
            model, config = MixtralForCausalLM(mixtral), mixtral
    sd = {k: v.to(dtype) for k, v in hf_state_dict(state, args).items()}
    model.load_state_dict(sd, strict=True, assign=True)  # shares the tensors when the dtype already matches
    # The rotary inv_freq buffer was made on meta: rebuild it in float32 (as from_pretrained has it) on the
    # weights' device. Casting the model to bfloat16 would round it too.
    device = next(iter(sd.values())).device
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    return model.eval()
