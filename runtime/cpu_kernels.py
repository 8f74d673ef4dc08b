"""m7b's bf16 CPU kernels as torch functions: `BF16RowKernels` wraps the compiled `cpu_kernels_bf16.c` (loaded by
`cpu_kernels_build.py`) for one row of a decode step.

A decode step on the CPU is a chain of matrix-vector products over weights memory-mapped from the checkpoint, so
its speed is the speed at which those products read bf16 weights. torch's bf16 GEMV on CPUs without native bf16
instructions (AVX2-only x86) reads 7-18 GB/s where the memory gives ~30 (bench/README.md); m7b's kernel streams at
the memory's bandwidth. Beside it, the single-row work a step repeats per layer (RMSNorm, SwiGLU, wq/wk/wv and
w1/w3 as one call over the unmoved weights, rotary + cache write + attention, and a whole block in one call, a
Mixtral block with its routing and chosen experts too), and the whole token in one call (`decode_step`), several
greedy tokens too (`decode_greedy`).
Every tensor whose data pointer reaches C is checked here first; anything the kernels do not take goes to torch.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, replace
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .row_kernels import DecodePosition
from .step_weights import StepWeights

if TYPE_CHECKING:
    from ctypes import _NamedFuncPointer  # what a CDLL attribute is, in typeshed only

KERNEL_NAME = "m7b-bf16-avx2"
MAX_STACK = 4  # matrices one stacked product takes (the C side's limit)
MAX_HEAD_DIM = 1024  # the attention kernel keeps one head's output on the stack
MAX_VERDICTS = 512  # blocks whose weights' check is kept (a model's layers; more only when weights move)

_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
_data_ptr = torch.Tensor.data_ptr
_shape = attrgetter("shape")


@dataclass(frozen=True)
class _Verdict:
    """A block's weights that passed `_checked_weights`, as the C calls take them: the feed-forwards' hidden size,
    the matrices (kept alive, so no other tensor takes their identities), their data pointers when checked, and the
    pointer arrays of a Mixtral block call (attention's four, then every expert's w1s, w3s, w2s)."""

    hidden: int
    matrices: tuple[torch.Tensor, ...]
    pointers: tuple[int, ...]
    arrays: tuple[ctypes.Array[ctypes.c_void_p], ...]


class _DecodePlan(ctypes.Structure):
    """`m7b_decode_plan_t` (cpu_kernels_bf16.c), field for field."""

    _fields_ = [
        ("n_layers", ctypes.c_long),
        ("norms", _P),
        ("eps", ctypes.c_float),
        ("attention", _P),
        ("gates", _P),
        ("w1s", _P),
        ("w3s", _P),
        ("w2s", _P),
        *((name, ctypes.c_long) for name in ("n_experts", "k", "dim", "hidden", "n_heads", "n_kv", "head_dim")),
        ("k_caches", _P),
        ("v_caches", _P),
        ("capacity", ctypes.c_long),
        ("final_norm", _P),
        ("final_eps", ctypes.c_float),
        ("output", _P),
        ("vocab", ctypes.c_long),
        ("embedding", _P),
        ("slot_pos", _P),
        ("freqs", _P),
        ("max_pos", ctypes.c_long),
        ("window", ctypes.c_long),
        *((name, _P) for name in ("x", "mask", "work", "scratch", "chosen")),
    ]


@dataclass(frozen=True)
class _PreparedStep:
    """A `StepWeights` that passed `_prepare_step`: its tensors' data pointers and shapes as checked, aliases of
    their memory as it was then (so no memory C is given is freed and reused while this is kept), and the C plan
    (`plan` None: the kernel does not take these weights) with what its pointers point to (arrays, buffers)."""

    step: StepWeights
    pointers: tuple[int, ...]
    shapes: tuple[torch.Size, ...]
    memory: tuple[torch.Tensor, ...] = ()
    plan: _DecodePlan | None = None
    held: tuple[object, ...] = ()


def _is_plain(t: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> bool:
    """A contiguous CPU tensor of `dtype`: the only kind whose data pointer a kernel may be given."""
    return t.dtype == dtype and t.device.type == "cpu" and t.is_contiguous()


def _is_index(t: torch.Tensor) -> bool:
    """One int64 on the CPU: a token id or position the whole step reads."""
    return t.numel() == 1 and _is_plain(t, torch.long)


def _is_row(x: torch.Tensor, width: int) -> bool:
    """One contiguous bf16 CPU row of `width` (any leading dims of size 1): what the kernels take."""
    return x.dim() >= 1 and x.numel() == width and x.shape[-1] == width and _is_plain(x)


def _is_matrix(weight: torch.Tensor, width: int) -> bool:
    return weight.dim() == 2 and weight.shape[1] == width and _is_plain(weight)


class BF16RowKernels:
    """The compiled kernels for one bf16 row: `__call__` is `F.linear(x, weight)`, `stack` the product with
    several weights at once, `rms_norm` and `swiglu` the model's own formulas. Inputs the kernels do not take
    (another dtype or device, several rows, a strided view) go to torch. Every tensor whose data pointer reaches C
    is checked first (`_is_plain`: CPU, dtype, contiguous; shapes against the sizes C will use).

    One object serves one thread: its scratch and work rows are reused from call to call (a decode step is one
    thread of Python; the C code parallelises inside a call)."""

    name = KERNEL_NAME

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._matvec = _bind(library.m7b_matvec_bf16, [_P, _P, _L, _L, _P, _P, _I])
        self._stack = _bind(library.m7b_matvec_stack_bf16, [_P, _P, _I, _P, _L, _P, _P, _I])
        self._rms_norm = _bind(library.m7b_rms_norm_bf16, [_P, _P, _L, _F, _P])
        self._swiglu = _bind(library.m7b_swiglu_bf16, [_P, _P, _L, _P])
        self._attention = _bind(
            library.m7b_attention_step_bf16, [_P, _P, _P, _P, _L, _P, _L, _L, _L, _L, _F, _P, _P, _I]
        )
        self._block = _bind(
            library.m7b_block_step_bf16,
            [_P, _P, _P, _F, *[_P] * 7, _L, _L, _L, _L, _L, _P, _P, _P, _L, _P, _L, _P, _P, _I],
        )
        self._moe_block = _bind(
            library.m7b_moe_block_step_bf16,
            [_P, _P, _P, _F, _P, _P, _P, _P, _P, _L, _L, _L, _L, _L, _L, _L, _P, _P, _P, _L, _P, _L, _P, _P, _P, _I],
        )
        self._decode = library.m7b_decode_token_bf16
        self._decode.restype = ctypes.c_int
        self._decode.argtypes = [ctypes.POINTER(_DecodePlan), _P, _P, _P, _I]
        self._position_mask = _bind(library.m7b_position_mask, [_P, _L, ctypes.c_int64, _L, _P])
        self._greedy = library.m7b_decode_greedy_bf16
        self._greedy.restype = ctypes.c_long
        self._greedy.argtypes = [ctypes.POINTER(_DecodePlan), ctypes.c_int64, ctypes.c_int64, _L, ctypes.c_int64]
        self._greedy.argtypes += [_P, _P, _I]
        self._argmax = library.m7b_argmax_bf16
        self._argmax.restype = ctypes.c_long
        self._argmax.argtypes = [_P, _L]
        self._prepared: _PreparedStep | None = None  # `decode_step`'s last prepared weights
        self._buffers: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # block step work, scratch
        self._verdicts: dict[tuple[object, ...], _Verdict] = {}  # `_checked_weights`
        self._scratch: dict[int, torch.Tensor] = {}  # K floats per input width: the widened vector

    def _scratch_for(self, width: int) -> torch.Tensor:
        scratch = self._scratch.get(width)
        if scratch is None:
            scratch = self._scratch[width] = torch.empty(width, dtype=torch.float32)
        return scratch

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        width = x.shape[-1]
        if not (_is_row(x, width) and _is_matrix(weight, width)):
            return F.linear(x, weight)
        rows = weight.shape[0]
        y = torch.empty((*x.shape[:-1], rows), dtype=torch.bfloat16)
        scratch = self._scratch_for(width)
        self._matvec(weight.data_ptr(), x.data_ptr(), rows, width, y.data_ptr(), scratch.data_ptr(), _threads())
        return y

    def stack(self, x: torch.Tensor, weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """`torch.cat([F.linear(x, w) for w in weights], -1)` in one pass, the weights left where they are."""
        width = x.shape[-1]
        if not (0 < len(weights) <= MAX_STACK and _is_row(x, width) and all(_is_matrix(w, width) for w in weights)):
            return torch.cat([F.linear(x, w) for w in weights], dim=-1)
        rows = [w.shape[0] for w in weights]
        y = torch.empty((*x.shape[:-1], sum(rows)), dtype=torch.bfloat16)
        pointers = (ctypes.c_void_p * len(weights))(*(w.data_ptr() for w in weights))
        counts = (ctypes.c_long * len(weights))(*rows)
        scratch = self._scratch_for(width)
        self._stack(pointers, counts, len(weights), x.data_ptr(), width, y.data_ptr(), scratch.data_ptr(), _threads())
        return y

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor | None:
        """The model's RMSNorm of one row; None when the kernel does not take these inputs."""
        width = x.shape[-1]
        if not (_is_row(x, width) and weight.shape == (width,) and _is_plain(weight)):
            return None
        y = torch.empty_like(x)
        self._rms_norm(x.data_ptr(), weight.data_ptr(), width, eps, y.data_ptr())
        return y

    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """`F.silu(gate) * up` (bf16, rounded as torch rounds each op)."""
        width = gate.shape[-1]
        if not (_is_row(gate, width) and _is_row(up, width) and gate.shape == up.shape):
            return F.silu(gate) * up
        y = torch.empty_like(gate)
        self._swiglu(gate.data_ptr(), up.data_ptr(), width, y.data_ptr())
        return y

    def attention_step(self, qkv: torch.Tensor, position: DecodePosition) -> torch.Tensor | None:
        """One decode position's attention from the stacked q|k|v row: rotary embedding, k and v stored in the
        caches at the position's slot, each query head over its key/value head's visible slots. Returns
        (1, 1, n_heads * head_dim), or None when the kernel does not take these inputs (the caller then runs
        torch's path)."""
        n_heads, n_kv_heads, head_dim = position.heads
        if not _is_row(qkv, (n_heads + 2 * n_kv_heads) * head_dim):
            return None
        checked = _attention_inputs(position)
        if checked is None:
            return None
        pairs, slot, capacity = checked
        size = n_heads * (2 * head_dim + capacity) + capacity + 2
        key = -size  # negative: never a product's width
        scratch = self._scratch.get(key)
        if scratch is None:
            scratch = self._scratch[key] = torch.empty(size, dtype=torch.float32)
        out = torch.empty((1, 1, n_heads * head_dim), dtype=torch.bfloat16)
        self._attention(
            qkv.data_ptr(),
            pairs.data_ptr(),
            position.k_cache.data_ptr(),
            position.v_cache.data_ptr(),
            slot,
            position.mask.data_ptr(),
            n_heads,
            n_kv_heads,
            capacity,
            head_dim,
            attention_scale(head_dim),
            out.data_ptr(),
            scratch.data_ptr(),
            _threads(),
        )
        return out

    def block_step(
        self,
        x: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor],
        eps: float,
        weights: tuple[torch.Tensor, ...],
        position: DecodePosition,
    ) -> bool:
        """A whole TransformerBlock on one decode row `x` (updated in place): `norms` (attention_norm, ffn_norm),
        `weights` in `row_kernels.BLOCK_WEIGHTS` order (wq, wk, wv, wo, w1, w3, w2: the C function's). False, with
        nothing touched, when the kernel does not take these inputs (the caller then runs the module)."""
        if len(weights) != 7:
            return False
        checked = self._block_inputs(x, norms, weights[:4], (weights[4:],), position)
        if checked is None:
            return False
        pairs, slot, capacity, verdict, (work, scratch) = checked
        n_heads, n_kv_heads, head_dim = position.heads
        self._block(
            x.data_ptr(),
            norms[0].data_ptr(),
            norms[1].data_ptr(),
            eps,
            *verdict.pointers,
            x.shape[-1],
            verdict.hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            *position_args(position, pairs, slot, capacity),
            work.data_ptr(),
            scratch.data_ptr(),
            _threads(),
        )
        return True

    def moe_block_step(
        self,
        x: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor],
        eps: float,
        attention: tuple[torch.Tensor, ...],
        gate: torch.Tensor,
        experts: tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], ...],
        per_token: int,
        position: DecodePosition,
    ) -> list[int] | None:
        """A whole Mixtral block on one decode row `x` (updated in place), routed as `moe.MoeFeedForward.on_rows`:
        `attention` (wq, wk, wv, wo), the `gate` (n_experts, dim), each expert's (w1, w3, w2). Returns the experts
        it ran (largest gate logit first), or None, with nothing touched, when the kernel does not take these inputs."""
        dim = x.shape[-1]
        if not (len(attention) == 4 and experts and 0 < per_token <= len(experts)):
            return None
        if not (gate.shape == (len(experts), dim) and _is_matrix(gate, dim)):
            return None
        checked = self._block_inputs(x, norms, attention, experts, position)
        if checked is None:
            return None
        pairs, slot, capacity, verdict, (work, scratch) = checked
        n_heads, n_kv_heads, head_dim = position.heads
        chosen = (ctypes.c_long * per_token)()
        attention_array, w1s, w3s, w2s = verdict.arrays
        self._moe_block(
            x.data_ptr(),
            norms[0].data_ptr(),
            norms[1].data_ptr(),
            eps,
            attention_array,
            gate.data_ptr(),
            w1s,
            w3s,
            w2s,
            len(experts),
            per_token,
            dim,
            verdict.hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            *position_args(position, pairs, slot, capacity),
            work.data_ptr(),
            scratch.data_ptr(),
            chosen,
            _threads(),
        )
        return list(chosen)

    def decode_step(self, step: StepWeights, token: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor | None:
        """A whole decode step in one call, from the token (1, 1) and its position (1,): the position's cache slot
        and mask (as `Transformer.positions`, recording it in the model's `slot_pos`), the embedding, every block
        (dense, or Mixtral with its routing), the final norm and the output projection; returns the logits
        (1, vocab). None, with nothing touched, when the kernel does not take these weights, or a token or
        position out of range (the caller then runs the model's own code, which says what is wrong). The weights
        pass `_prepare_step` once (`_plan`)."""
        plan = self._plan(step)
        if plan is None or not (_is_index(token) and _is_index(input_pos)):
            return None
        logits = torch.empty((1, plan.vocab), dtype=torch.bfloat16)
        if self._decode(plan, token.data_ptr(), input_pos.data_ptr(), logits.data_ptr(), _threads()):
            return None
        return logits

    def decode_greedy(self, step: StepWeights, token: int, position: int, n: int, eos: int) -> list[int] | None:
        """Up to `n` greedy tokens after `token` at `position`, each from a whole decode step (`decode_step`) and its
        logits' argmax (as `sampling.greedy`), fed back in C: the tokens, the last one `eos` when it came (`eos` < 0:
        none stops the run). None, with nothing touched, when the kernel does not take these weights or the first
        position."""
        plan = self._plan(step)
        if plan is None or n < 1:
            return None
        tokens = (ctypes.c_int64 * n)()
        logits = torch.empty(plan.vocab, dtype=torch.bfloat16)
        count = self._greedy(plan, token, position, n, eos, tokens, logits.data_ptr(), _threads())
        return list(tokens[:count]) if count else None

    def argmax(self, values: torch.Tensor) -> int:
        """The greedy pick of the whole step (`m7b_argmax_bf16`) over a 1-d bf16 tensor."""
        if not (_is_plain(values) and values.dim() == 1 and values.numel()):
            raise ValueError("argmax takes a non-empty contiguous 1-d bf16 CPU tensor")
        return int(self._argmax(values.data_ptr(), values.numel()))

    def _plan(self, step: StepWeights) -> _DecodePlan | None:
        """The C plan of `step`'s weights, prepared once and checked per call: every tensor still has the data
        pointer and shape checked (a tensor whose memory was replaced is checked again). None: the kernel does not
        take these weights."""
        prepared = self._prepared
        if prepared is None or prepared.step is not step:
            prepared = self._prepared = self._prepare_step(step)
        tensors = step.tensors
        if tuple(map(_data_ptr, tensors)) != prepared.pointers or tuple(map(_shape, tensors)) != prepared.shapes:
            prepared = self._prepared = self._prepare_step(step)
        return prepared.plan

    def position_mask(self, slot_pos: torch.Tensor, pos: int, window: int) -> torch.Tensor:
        """The whole step's mask of the slots position `pos` sees (as `attention.band_mask` of one query)."""
        if not _is_plain(slot_pos, torch.long) or slot_pos.dim() != 1:
            raise ValueError("slot_pos must be a contiguous 1-d int64 CPU tensor")
        mask = torch.empty(slot_pos.shape[0], dtype=torch.bool)
        self._position_mask(slot_pos.data_ptr(), slot_pos.shape[0], pos, window, mask.data_ptr())
        return mask

    def _prepare_step(self, step: StepWeights) -> _PreparedStep:
        """The step's checked record: every tensor of the shape, dtype and layout (contiguous, CPU) the C code walks,
        the heads as the attention kernel takes them; else a record that declines (`plan` None)."""
        tensors = step.tensors
        declined = _PreparedStep(step, tuple(map(_data_ptr, tensors)), tuple(map(_shape, tensors)))
        n_heads, n_kv_heads, head_dim = heads = step.heads
        first = step.layers[0]
        if not (first.experts and step.norm.dim() == 1 and step.output.dim() == 2 and step.freqs.dim() == 3):
            return declined
        dim, experts, vocab, max_pos = step.norm.shape[0], len(first.experts), step.output.shape[0], step.freqs.shape[0]
        hidden = first.experts[0][0].shape[0] if first.experts[0][0].dim() == 2 else 0
        capacity = first.caches[0].shape[2] if first.caches[0].dim() == 4 else 0
        dense = first.gate is None
        if not (
            _heads_ok(*heads)
            and capacity > 0
            and (step.per_token == experts == 1 if dense else 0 < step.per_token <= experts)
            and step.norm.shape == (dim,)
            and _is_plain(step.norm)
            and _is_matrix(step.output, dim)
            and step.embedding.shape == (vocab, dim)
            and _is_plain(step.embedding)
            and step.slot_pos.shape == (capacity,)
            and _is_plain(step.slot_pos, torch.long)
            and step.freqs.shape == (max_pos, head_dim // 2, 2)
            and _is_plain(step.freqs, torch.float32)
            and 0 < step.window < 1 << 62
        ):
            return declined
        shapes = _block_shapes(dim, heads, hidden, experts)
        cache_shape = (1, n_kv_heads, capacity, head_dim)
        for layer in step.layers:
            matrices = (*layer.attention, *chain.from_iterable(layer.experts))
            gate = layer.gate
            if not (
                len(layer.experts) == experts
                and all(n.shape == (dim,) and _is_plain(n) for n in layer.norms)
                and len(matrices) == len(shapes)
                and all(w.shape == shape and _is_matrix(w, shape[1]) for w, shape in zip(matrices, shapes, strict=True))
                and (
                    gate is None
                    if dense
                    else gate is not None and gate.shape == (experts, dim) and _is_matrix(gate, dim)
                )
                and all(c.shape == cache_shape and _is_plain(c) for c in layer.caches)
            ):
                return declined
        layers = step.layers
        held: list[object] = []

        def array(items: list[torch.Tensor]) -> int:
            pointers = (ctypes.c_void_p * len(items))(*map(_data_ptr, items))
            held.append(pointers)
            return ctypes.addressof(pointers)

        def buffer(t: torch.Tensor | ctypes.Array[ctypes.c_long]) -> int:
            held.append(t)
            return t.data_ptr() if isinstance(t, torch.Tensor) else ctypes.addressof(t)

        w1s, w3s, w2s = ([expert[i] for layer in layers for expert in layer.experts] for i in range(3))
        work, scratch = self._work(dim, hidden, heads, capacity, experts)
        plan = _DecodePlan(
            len(layers),
            array([n for layer in layers for n in layer.norms]),
            step.eps,
            array([w for layer in layers for w in layer.attention]),
            None if dense else array([layer.gate for layer in layers if layer.gate is not None]),
            array(w1s),
            array(w3s),
            array(w2s),
            experts,
            step.per_token,
            dim,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            array([layer.caches[0] for layer in layers]),
            array([layer.caches[1] for layer in layers]),
            capacity,
            step.norm.data_ptr(),
            step.norm_eps,
            step.output.data_ptr(),
            vocab,
            step.embedding.data_ptr(),
            step.slot_pos.data_ptr(),
            step.freqs.data_ptr(),
            max_pos,
            step.window,
            buffer(torch.empty(dim, dtype=torch.bfloat16)),
            buffer(torch.empty(capacity, dtype=torch.uint8)),
            buffer(work),
            buffer(scratch),
            buffer((ctypes.c_long * (len(layers) * step.per_token))()),
        )
        memory = tuple(t.detach() for t in tensors)
        return replace(declined, memory=memory, plan=plan, held=tuple(held))

    def _block_inputs(
        self,
        x: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor],
        attention: tuple[torch.Tensor, ...],
        feed_forwards: tuple[tuple[torch.Tensor, ...], ...],
        position: DecodePosition,
    ) -> tuple[torch.Tensor, int, int, _Verdict, tuple[torch.Tensor, torch.Tensor]] | None:
        """(cos/sin pairs, slot, capacity, the weights' verdict, (work, scratch)) when a block call takes these
        inputs: one bf16 row, both norms, wq/wk/wv/wo and each (w1, w3, w2) of the shapes the C code walks, the
        attention's inputs."""
        dim = x.shape[-1]
        if not (_is_row(x, dim) and len(norms) == 2 and all(n.shape == (dim,) and _is_plain(n) for n in norms)):
            return None
        verdict = self._checked_weights(dim, position.heads, attention, feed_forwards)
        if verdict is None:
            return None
        checked = _attention_inputs(position)
        if checked is None:
            return None
        pairs, slot, capacity = checked
        return (
            pairs,
            slot,
            capacity,
            verdict,
            self._work(dim, verdict.hidden, position.heads, capacity, len(feed_forwards)),
        )

    def _work(
        self, dim: int, hidden: int, heads: tuple[int, int, int], capacity: int, experts: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The block calls' (work, scratch) for these sizes, kept between calls."""
        n_heads, n_kv_heads, head_dim = heads
        key = (dim, hidden, *heads, capacity, experts)
        buffers = self._buffers.get(key)
        if buffers is None:
            q_size, kv_size = n_heads * head_dim, n_kv_heads * head_dim
            # the dense block's rows, then (a mixture of experts) the gate's logits and the experts' sum
            rows = 2 * dim + q_size + 2 * kv_size + q_size + 3 * hidden + experts + dim
            work = torch.empty(rows, dtype=torch.bfloat16)
            scratch_size = max(dim, hidden, q_size, n_heads * (2 * head_dim + capacity) + capacity + 2)
            scratch = torch.empty(scratch_size, dtype=torch.float32)
            buffers = self._buffers[key] = (work, scratch)
        return buffers

    def _checked_weights(
        self,
        dim: int,
        heads: tuple[int, int, int],
        attention: tuple[torch.Tensor, ...],
        feed_forwards: tuple[tuple[torch.Tensor, ...], ...],
    ) -> _Verdict | None:
        """The verdict (`_Verdict`) when wq/wk/wv/wo and each (w1, w3, w2) have the shapes the C code walks (bf16,
        CPU, contiguous), else None. A block's weights pass once: the verdict is kept under the tensors' identities
        (the tensors kept alive with it, so none is reused by another tensor) and holds for as long as their data
        pointers are the ones checked; a weight moved or replaced is checked again. A decode step of a small model
        spends more on these checks than on its products otherwise."""
        matrices = (*attention, *chain.from_iterable(feed_forwards))
        key = (dim, heads, len(attention), *map(len, feed_forwards), *map(id, matrices))
        pointers = tuple(map(_data_ptr, matrices))
        known = self._verdicts.get(key)
        if known is not None and known.pointers == pointers:
            return known
        if len(attention) != 4 or not feed_forwards or any(len(f) != 3 for f in feed_forwards):
            return None
        hidden = feed_forwards[0][0].shape[0] if feed_forwards[0][0].dim() == 2 else 0
        shapes = _block_shapes(dim, heads, hidden, len(feed_forwards))
        if not all(w.shape == shape and _is_matrix(w, shape[1]) for w, shape in zip(matrices, shapes, strict=True)):
            return None
        experts = ctypes.c_void_p * len(feed_forwards)
        arrays = ((ctypes.c_void_p * 4)(*pointers[:4]), *(experts(*pointers[4 + i :: 3]) for i in range(3)))
        if len(self._verdicts) >= MAX_VERDICTS:
            self._verdicts.clear()
        verdict = self._verdicts[key] = _Verdict(hidden, matrices, pointers, arrays)
        return verdict


def _heads_ok(n_heads: int, n_kv_heads: int, head_dim: int) -> bool:
    """Head layouts the attention kernel walks: an even head_dim within its stack buffer, whole groups."""
    return 0 < head_dim <= MAX_HEAD_DIM and head_dim % 2 == 0 and n_kv_heads > 0 and n_heads % n_kv_heads == 0


def _position_inputs(
    freqs: torch.Tensor, mask: torch.Tensor, slots: torch.Tensor, head_dim: int, capacity: int
) -> tuple[torch.Tensor, int] | None:
    """(cos/sin pairs, slot) of one decode position when the kernels take it, else None."""
    pairs = torch.view_as_real(freqs) if freqs.is_complex() else freqs
    if not (
        mask.numel() == capacity
        and _is_plain(mask, torch.bool)
        and pairs.numel() == head_dim
        and _is_plain(pairs, torch.float32)
        and slots.numel() == 1
        and slots.device.type == "cpu"
    ):
        return None
    slot = int(slots.reshape(()).item())
    return (pairs, slot) if 0 <= slot < capacity else None


def _attention_inputs(position: DecodePosition) -> tuple[torch.Tensor, int, int] | None:
    """(cos/sin pairs, slot, capacity) when the attention kernel takes these inputs, else None."""
    n_heads, n_kv_heads, head_dim = position.heads
    k_cache, v_cache = position.k_cache, position.v_cache
    capacity = k_cache.shape[2] if k_cache.dim() == 4 else 0
    cache_shape = (1, n_kv_heads, capacity, head_dim)
    if not (
        _heads_ok(n_heads, n_kv_heads, head_dim)
        and all(c.shape == cache_shape and _is_plain(c) for c in (k_cache, v_cache))
    ):
        return None
    checked = _position_inputs(position.freqs, position.mask, position.slots, head_dim, capacity)
    return None if checked is None else (*checked, capacity)


def _block_shapes(dim: int, heads: tuple[int, int, int], hidden: int, feed_forwards: int) -> list[tuple[int, int]]:
    """The shapes of a block's wq, wk, wv, wo, then each feed-forward's (w1, w3, w2), as the C code walks them."""
    n_heads, n_kv_heads, head_dim = heads
    q_size, kv_size = n_heads * head_dim, n_kv_heads * head_dim
    return [(q_size, dim), (kv_size, dim), (kv_size, dim), (dim, q_size)] + [
        (hidden, dim),
        (hidden, dim),
        (dim, hidden),
    ] * feed_forwards


def position_args(position: DecodePosition, pairs: torch.Tensor, slot: int, capacity: int) -> tuple[int, ...]:
    """The block calls' arguments for the position (C order): rotations, k and v caches, slot, mask, capacity."""
    k, v, mask = position.k_cache.data_ptr(), position.v_cache.data_ptr(), position.mask.data_ptr()
    return (pairs.data_ptr(), k, v, slot, mask, capacity)


def attention_scale(head_dim: int) -> float:
    """1 / sqrt(head_dim) (SDPA's default), as the block kernel computes it: in double, then rounded to float."""
    return 1.0 / math.sqrt(head_dim)


def _bind(fn: _NamedFuncPointer, argtypes: list[type]) -> _NamedFuncPointer:
    fn.restype = None
    fn.argtypes = argtypes
    return fn


def _threads() -> int:
    return torch.get_num_threads()
