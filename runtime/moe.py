"""A mixture of experts (Mixtral): each layer's feed-forward is `num_experts` SwiGLU experts and a gate, and each
token runs only the `num_experts_per_tok` experts its gate chooses.

Routing as mistral-inference's `moe.py`: gate logits → top-k → softmax over the k chosen logits in float32 (cast
back to the activations' dtype) → the weighted sum of the chosen experts' outputs. (transformers' Mixtral takes the
softmax over all experts, then top-k, then renormalises: equal in exact arithmetic.) Module names mirror the
checkpoint keys (`feed_forward.gate.weight`, `feed_forward.experts.E.w1.weight`, ...), so a release's state dict
loads with no renaming.

Three ways to run the same routing:
- `forward`: the eager loop over experts, each on the rows routed to it (mistral-inference's; any batch, prefill);
- `forward_gathered`: gpt-fast's `mixtral-moe` step — expert weights stacked at load (`stack_experts`: w1|w3 as one
  (E, 2H, D) tensor, w2 as (E, D, H); the checkpoint's weights become views of them, so memory stays the same) and
  the chosen experts' matrices gathered by index, with no data-dependent shapes: what torch.compile and CUDA graphs
  capture. Used for a few rows (decode) once the experts are stacked;
- `on_rows`: one decode row whose experts run on row kernels (m7b's CPU kernels, `row_kernels.py`): only the chosen
  experts' weights are read, so a token costs the *active* bytes, not the whole checkpoint. (m7b's C kernels also
  take the whole block, this routing included, in one call: `cpu_kernels.BF16RowKernels.moe_block_step`, the same
  bits; this is the path when they decline.)

The experts are built by the caller (`model.FeedForward`), so this module never imports the model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from .args import ModelArgs

# The gathered step copies the chosen experts' matrices per row: for a decode row that is the weights it reads
# anyway; for a long prefill chunk it would be k copies of the experts per token, so more rows take the loop.
GATHER_MAX_ROWS = 4

ExpertWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # an expert's w1, w3, w2
RowWeights = tuple[torch.Tensor, tuple[ExpertWeights, ...]]  # the gate's weight, every expert's


class Expert(Protocol):
    """A SwiGLU expert as the checkpoint names it (`model.FeedForward`)."""

    w1: nn.Linear
    w2: nn.Linear
    w3: nn.Linear

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class MoeFeedForward(nn.Module):
    """`feed_forward` of a Mixtral layer: `gate` (E, dim) and `experts.E` (w1, w2, w3 as a dense layer's)."""

    w13: torch.Tensor  # buffers made by `stack_experts`: every expert's w1|w3, (E, 2 * hidden, dim) ...
    w2s: torch.Tensor  # ... and every w2, (E, dim, hidden)

    def __init__(self, args: ModelArgs, expert: Callable[[], nn.Module]) -> None:
        super().__init__()
        assert args.moe is not None, "a dense architecture has no experts"
        self.num_experts = args.moe.num_experts
        self.num_experts_per_tok = args.moe.num_experts_per_tok
        self.gate = nn.Linear(args.dim, self.num_experts, bias=False)
        self.experts = nn.ModuleList(expert() for _ in range(self.num_experts))
        self.stacked = False
        self._row_weights: RowWeights | None = None
        self.register_load_state_dict_post_hook(lambda module, keys: module.forget_row_weights())

    def row_weights(self) -> RowWeights:
        """The gate's weight and each expert's (w1, w3, w2), as a one-call block kernel takes them; kept between
        decode steps (looking them up through the modules costs more than a small layer's products) and dropped
        when the weights are replaced (`load_state_dict`, `stack_experts`)."""
        if self._row_weights is None:
            experts = tuple(
                (ex.w1.weight, ex.w3.weight, ex.w2.weight) for ex in map(self.expert, range(self.num_experts))
            )
            self._row_weights = (self.gate.weight, experts)
        return self._row_weights

    def forget_row_weights(self) -> None:
        self._row_weights = None

    def expert(self, e: int) -> Expert:
        return cast(Expert, self.experts[e])

    def route(self, gate_logits: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, chosen) of gate logits (T, E): the top-k experts of each row, and the softmax over those k
        logits in float32, cast to `dtype` (mistral-inference)."""
        top, chosen = torch.topk(gate_logits, self.num_experts_per_tok, dim=-1)
        return F.softmax(top, dim=-1, dtype=torch.float32).to(dtype), chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, chosen = self.route(self.gate(flat), flat.dtype)
        if self.stacked and flat.shape[0] <= GATHER_MAX_ROWS:
            return self.gathered(flat, weights, chosen).view(x.shape)
        out = torch.zeros_like(flat)
        for e in range(self.num_experts):
            rows, nth = torch.where(chosen == e)
            if rows.numel():
                out.index_add_(0, rows, weights[rows, nth, None] * self.expert(e)(flat[rows]))
        return out.view(x.shape)

    def gathered(self, flat: torch.Tensor, weights: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """The chosen experts of rows `flat` (T, D) from the stacked weights, gathered by index (gpt-fast)."""
        gate, up = torch.einsum("td,tkhd->tkh", flat, self.w13[chosen]).chunk(2, dim=-1)
        y = torch.einsum("tkh,tkdh->tkd", F.silu(gate) * up, self.w2s[chosen])
        return torch.einsum("tkd,tk->td", y, weights)

    def on_rows(
        self,
        x: torch.Tensor,
        gate_logits: torch.Tensor,
        run_expert: Callable[[Expert, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One decode row `x` (1, 1, D) with its gate logits (from a row kernel), each chosen expert run by
        `run_expert` (SwiGLU on row kernels): only those experts' weights are read."""
        weights, chosen = self.route(gate_logits.reshape(1, -1), x.dtype)
        out: torch.Tensor | None = None
        for j, e in enumerate(chosen[0].tolist()):
            y = run_expert(self.expert(e), x) * weights[0, j]  # a 0-d tensor in x's dtype, as mistral-inference's
            out = y if out is None else out + y
        assert out is not None  # num_experts_per_tok >= 1
        return out


def stack_experts(module: MoeFeedForward) -> None:
    """Stack the experts' w1|w3 into `w13` (E, 2H, D) and w2 into `w2s` (E, D, H), the experts' weights becoming
    views of them (memory and the state dict's keys unchanged; weights memory-mapped from a file get a private copy,
    so the loader does it on GPUs, where the compiled step gathers from them)."""
    if module.stacked:
        return
    experts = [module.expert(e) for e in range(module.num_experts)]
    w13 = torch.stack([torch.cat([ex.w1.weight.detach(), ex.w3.weight.detach()]) for ex in experts])
    w2 = torch.stack([ex.w2.weight.detach() for ex in experts])
    hidden = experts[0].w1.weight.shape[0]
    for e, ex in enumerate(experts):
        ex.w1.weight = nn.Parameter(w13[e, :hidden], requires_grad=False)
        ex.w3.weight = nn.Parameter(w13[e, hidden:], requires_grad=False)
        ex.w2.weight = nn.Parameter(w2[e], requires_grad=False)
    module.register_buffer("w13", w13, persistent=False)
    module.register_buffer("w2s", w2, persistent=False)
    module.stacked = True
    module.forget_row_weights()


def stack_all_experts(layers: list[nn.Module]) -> None:
    """`stack_experts` for every mixture-of-experts feed-forward among `layers`' modules."""
    for layer in layers:
        for module in layer.modules():
            if isinstance(module, MoeFeedForward):
                stack_experts(module)
