"""Quantization as a transform of a model's linear weights: each `nn.Linear` whose weight a scheme takes becomes a
`QuantizedLinear` holding the quantized values and scales (`quantize.QuantizedWeight`) as buffers.

Its forward is torch's: int8 as gpt-fast's `WeightOnlyInt8Linear` (the int8 weight cast to the activation's dtype,
the product, times the per-row scales: inductor fuses the cast into the product on CUDA); int4 through torch's
int4 packed matmul on CUDA (`_weight_int4pack_mm`, packed once by `pack_for_device`), else the dequantized matrix.
The CPU decode step runs m7b's kernels on the same buffers instead (`quant_decode.py`).

Which linears: every `nn.Linear` of the model (so the experts of a mixture too, when they are linears) whose rows
are multiples of 32, except `output` (the logits' projection stays in the release's precision, as llama.cpp keeps
it at 6 bits beside Q4_0: its error reaches every logit directly) and the embedding table (read one row a token).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .quantize import GROUP, QuantizedWeight, dequantize, int4_pack_for_torch, quantizable

KEPT_LINEARS = ("output",)  # module names never quantized
# Rows up to which an int4 product on the CPU goes row by row through m7b's kernels (each row reads the weights once)
# rather than through the dequantized matrix (writing and reading it in bf16: ~1.5 s for a 14336 x 4096 matrix).
ROW_KERNEL_MAX_ROWS = 64
INT4_INNER_K_TILES = 8  # gpt-fast's choice for `_convert_weight_to_int4pack` on CUDA


class QuantizedLinear(nn.Module):
    """`y = x W^T` with W in a quantization scheme (no bias: the model's linears have none)."""

    q: torch.Tensor
    scales: torch.Tensor

    def __init__(self, weight: QuantizedWeight) -> None:
        super().__init__()
        self.scheme = weight.scheme
        self.in_features, self.out_features = weight.in_features, weight.out_features
        self.register_buffer("q", weight.q, persistent=False)
        self.register_buffer("scales", weight.scales, persistent=False)
        self.int4pack: torch.Tensor | None = None  # torch's packed int4 layout and scales, on CUDA only
        self.scales_and_zeros: torch.Tensor | None = None
        self.act_scales: torch.Tensor | None = None  # int8's scales in the activations' dtype (`prepare_for`)
        # m7b's quantized CPU kernels (`cpu_kernels_quant.QuantRowKernels`), set by the eager CPU step that uses
        # them: a short prefill chunk's int4 products go through them row by row
        self.row_kernels: Any = None

    @property
    def weight_q(self) -> QuantizedWeight:
        return QuantizedWeight(self.scheme, self.q, self.scales)

    @property
    def nbytes(self) -> int:
        """Bytes a product reads: the values and the scales."""
        return self.q.nbytes + self.scales.nbytes

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.bfloat16 and not torch.compiler.is_compiling():
            fast = self._cpu_product(x)
            if fast is not None:
                return fast
        if self.scheme == "int8":
            # scales already in x's dtype: inductor's weight-only int8 lowering takes a buffer, not a cast of one
            act = self.act_scales if self.act_scales is not None and self.act_scales.dtype == x.dtype else None
            return F.linear(x, self.q.to(x.dtype)) * (act if act is not None else self.scales.to(x.dtype))
        if self.int4pack is not None and self.scales_and_zeros is not None and x.is_cuda:
            flat = x.reshape(-1, self.in_features)
            y = torch.ops.aten._weight_int4pack_mm(flat, self.int4pack, GROUP, self.scales_and_zeros)
            return y.reshape(*x.shape[:-1], self.out_features)
        return F.linear(x, dequantize(self.weight_q, x.dtype))

    def _cpu_product(self, x: torch.Tensor) -> torch.Tensor | None:
        """The product on the CPU without a dequantized matrix: int8 through torch's weight-only int8 matmul,
        int4 (a few rows) row by row on m7b's kernels; None when neither applies."""
        rows = x.reshape(-1, self.in_features)
        if self.scheme == "int8" and self.act_scales is not None and hasattr(torch, "_weight_int8pack_mm"):
            y = torch._weight_int8pack_mm(rows.contiguous(), self.q, self.act_scales)
            return y.reshape(*x.shape[:-1], self.out_features)
        kernels = self.row_kernels
        if kernels is None or rows.shape[0] > ROW_KERNEL_MAX_ROWS:
            return None
        out = [kernels.stack(rows[i].reshape(1, 1, -1).contiguous(), (self,)) for i in range(rows.shape[0])]
        return torch.cat(out).reshape(*x.shape[:-1], self.out_features)

    def prepare_for(self, dtype: torch.dtype) -> None:
        """Ready the torch forward for activations in `dtype` on the weights' device: int8's scales in that dtype;
        on CUDA, int4 in torch's packed layout for `_weight_int4pack_mm` (gpt-fast's `WeightOnlyInt4Linear`): the
        values in [0, 15], the scales beside zero offsets of 0."""
        if self.scheme == "int8":
            self.act_scales = self.scales.to(dtype)
            return
        if self.q.device.type != "cuda":
            return
        values, scales_and_zeros = int4_pack_for_torch(self.weight_q)
        packed = ((values[:, ::2] << 4) | values[:, 1::2]).to(torch.uint8)
        self.int4pack = torch.ops.aten._convert_weight_to_int4pack(packed, INT4_INNER_K_TILES)
        self.scales_and_zeros = scales_and_zeros.to(dtype)


def linear_names(model: nn.Module) -> list[str]:
    """The model's `nn.Linear` modules a scheme takes, by module name (`layers.0.attention.wq`, ...)."""
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name not in KEPT_LINEARS and quantizable(tuple(module.weight.shape))
    ]


def kept_linears(model: nn.Module) -> list[str]:
    """The model's `nn.Linear` modules that stay in the release's precision."""
    quantized = set(linear_names(model))
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in quantized]


def apply_quantized(model: nn.Module, weights: dict[str, QuantizedWeight]) -> nn.Module:
    """Replace each linear named in `weights` by its `QuantizedLinear` (in place; the old weight is dropped)."""
    for name, weight in weights.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if not isinstance(old, nn.Linear) or tuple(old.weight.shape) != (weight.out_features, weight.in_features):
            raise ValueError(f"{name}: no linear of shape {(weight.out_features, weight.in_features)} to quantize")
        setattr(parent, child, QuantizedLinear(weight))
    return model


def quantized_linears(model: nn.Module) -> list[QuantizedLinear]:
    return [m for m in model.modules() if isinstance(m, QuantizedLinear)]


def step_bytes(model: nn.Module) -> int:
    """Bytes one decode step reads of the weights: every parameter and quantized buffer but the embedding table."""
    embedding = sum(m.weight.nbytes for m in model.modules() if isinstance(m, nn.Embedding))
    params = sum(p.nbytes for p in model.parameters())
    return params - embedding + sum(m.nbytes for m in quantized_linears(model))
