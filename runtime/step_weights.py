"""Every tensor a whole decode step reads, gathered from a model once (`gather_step`), and the proof, cheap to check
each token, that the model still leads to exactly those tensors (`Witness`).

A decode step on row kernels that walks the model's modules every token (`row_kernels.block_in_one_call`) spends,
on a small model, about as long in Python as in its products, and the walk's objects are evicted from the caches
by the weights each token streams. A prepared step reads the model's tensors from `StepWeights` instead, so a
token touches a handful of Python objects; it is as strict as the walk because the `Witness` records each mapping
on the way (a module's `_modules`, `_parameters`, `_buffers`, its attributes) with the key looked up and the object
found: while every key maps to the very same object, and every list of layers or experts keeps its length, the
walk would find the same tensors. A module, weight, cache or eps replaced (`setup_caches`, `block.attention = ...`,
`linear.weight = Parameter(...)`) breaks the witness, and the step is gathered again. What stays the same object but
changes its memory (`weight.data = ...`) is the kernels' to see: they check each tensor's data pointer and shape
every call (`cpu_kernels.BF16RowKernels.decode_step`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import chain
from operator import getitem, is_
from typing import Any

import torch
from torch import nn

from .model import Attention, FeedForward, RMSNorm, Transformer
from .moe import ExpertWeights, MoeFeedForward


@dataclass
class Witness:
    """Lookups made on the way from a model to some tensors: (mapping, key, object found) and (mapping, its length)."""

    tables: list[Mapping[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    found: list[object] = field(default_factory=list)
    sizes: list[tuple[Mapping[str, Any], int]] = field(default_factory=list)

    def take(self, table: Mapping[str, Any], key: str) -> Any:
        """`table[key]`, recorded (KeyError when absent)."""
        value = table[key]
        self.tables.append(table)
        self.keys.append(key)
        self.found.append(value)
        return value

    def child(self, module: nn.Module, name: str) -> Any:
        return self.take(module._modules, name)

    def weight(self, module: nn.Module, name: str) -> torch.Tensor:
        """`module.<name>.weight`, both lookups recorded."""
        return self.take(self.child(module, name)._parameters, "weight")

    def attribute(self, module: nn.Module, name: str) -> Any:
        return self.take(module.__dict__, name)

    def children(self, module: nn.Module) -> list[nn.Module]:
        """A ModuleList's items in order, its length recorded."""
        table = module._modules
        self.sizes.append((table, len(table)))
        return [self.take(table, str(i)) for i in range(len(table))]

    def holds(self) -> bool:
        """True while every recorded key maps to the object found, and every recorded length is the same."""
        try:
            now = list(map(getitem, self.tables, self.keys))
        except KeyError:
            return False
        return all(map(is_, now, self.found)) and all(len(table) == n for table, n in self.sizes)


@dataclass(frozen=True)
class LayerWeights:
    """One block's tensors as a whole-step kernel takes them."""

    norms: tuple[torch.Tensor, torch.Tensor]  # attention_norm, ffn_norm
    attention: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # wq, wk, wv, wo
    gate: torch.Tensor | None  # a mixture of experts' gate (n_experts, dim); None: a dense block
    experts: tuple[ExpertWeights, ...]  # each expert's (w1, w3, w2); a dense block's one feed-forward
    caches: tuple[torch.Tensor, torch.Tensor]  # k_cache, v_cache


@dataclass(frozen=True)
class StepWeights:
    """Everything a whole decode step reads beside the token and its position: the layers (one eps, one per-token
    expert count, one head layout for all), the final norm, the output projection, the embedding table, the model's
    position buffers, and the witness that they still hold."""

    model: Transformer
    layers: tuple[LayerWeights, ...]
    eps: float  # every block norm's
    per_token: int  # experts a token runs (1: dense)
    heads: tuple[int, int, int]  # n_heads, n_kv_heads, head_dim
    norm: torch.Tensor
    norm_eps: float
    output: torch.Tensor
    embedding: torch.Tensor  # tok_embeddings' table
    slot_pos: torch.Tensor  # the model's buffers: each cache slot's position, and the rotary table
    freqs: torch.Tensor
    window: int  # the keys a query sees (`Transformer.window`)
    witness: Witness
    tensors: tuple[torch.Tensor, ...] = ()  # every tensor above, in a fixed order: what the kernels check per call

    def __post_init__(self) -> None:
        layers = chain.from_iterable(
            (*layer.norms, *layer.attention, *((layer.gate,) if layer.gate is not None else ()), *layer.caches)
            + tuple(chain.from_iterable(layer.experts))
            for layer in self.layers
        )
        own = (self.norm, self.output, self.embedding, self.slot_pos, self.freqs)
        object.__setattr__(self, "tensors", (*layers, *own))

    def holds(self, model: Transformer) -> bool:
        return model is self.model and self.witness.holds()


def _norm(witness: Witness, module: nn.Module, name: str) -> tuple[torch.Tensor, float]:
    norm = witness.child(module, name)
    if not isinstance(norm, RMSNorm):
        raise LookupError(name)
    return witness.take(norm._parameters, "weight"), witness.attribute(norm, "eps")


def _layer(witness: Witness, block: nn.Module) -> tuple[LayerWeights, set[float], int, tuple[int, int, int]]:
    attention = witness.child(block, "attention")
    if not isinstance(attention, Attention):
        raise LookupError("attention")
    heads = tuple(witness.attribute(attention, name) for name in ("n_heads", "n_kv_heads", "head_dim"))
    cache = witness.child(attention, "kv_cache")
    if cache is None:
        raise LookupError("kv_cache")
    caches = (witness.take(cache._buffers, "k_cache"), witness.take(cache._buffers, "v_cache"))
    wq, wk, wv, wo = (witness.weight(attention, name) for name in ("wq", "wk", "wv", "wo"))
    (attention_norm, eps1), (ffn_norm, eps2) = (
        _norm(witness, block, "attention_norm"),
        _norm(witness, block, "ffn_norm"),
    )
    feed_forward = witness.child(block, "feed_forward")
    gate: torch.Tensor | None = None
    if isinstance(feed_forward, MoeFeedForward):
        gate = witness.weight(feed_forward, "gate")
        experts = witness.children(witness.child(feed_forward, "experts"))
        per_token = witness.attribute(feed_forward, "num_experts_per_tok")
    elif isinstance(feed_forward, FeedForward):
        experts, per_token = [feed_forward], 1
    else:
        raise LookupError("feed_forward")
    weights = tuple(tuple(witness.weight(e, name) for name in ("w1", "w3", "w2")) for e in experts)
    layer = LayerWeights((attention_norm, ffn_norm), (wq, wk, wv, wo), gate, weights, caches)  # type: ignore[arg-type]
    return layer, {eps1, eps2}, per_token, heads


def gather_step(model: Transformer) -> StepWeights | None:
    """The model's `StepWeights`, or None when a whole-step kernel cannot take the model as it is: no caches yet,
    a module of another kind on the way (quantized or stacked projections), blocks of different eps, expert counts
    or head layouts."""
    witness = Witness()
    try:
        blocks = witness.children(witness.child(model, "layers"))
        gathered = [_layer(witness, block) for block in blocks]
        norm, norm_eps = _norm(witness, model, "norm")
        output = witness.weight(model, "output")
        embedding = witness.weight(model, "tok_embeddings")
        slot_pos, freqs = witness.take(model._buffers, "slot_pos"), witness.take(model._buffers, "freqs")
        window = witness.attribute(model, "args").attention_window  # args: frozen, so the same object, the same window
    except LookupError:  # KeyError included: a module, weight or cache not where the plain model has it
        return None
    if not gathered or not all(isinstance(t, torch.Tensor) for t in (output, embedding, slot_pos, freqs)):
        return None
    eps = set().union(*(g[1] for g in gathered))
    kinds = {(g[0].gate is None, len(g[0].experts), g[2], g[3]) for g in gathered}  # dense or not, experts, k, heads
    if len(eps) != 1 or len(kinds) != 1:
        return None
    _, _, per_token, heads = gathered[0]
    layers = tuple(g[0] for g in gathered)
    own = (norm, norm_eps, output, embedding, slot_pos, freqs, window)
    return StepWeights(model, layers, eps.pop(), per_token, heads, *own, witness)
