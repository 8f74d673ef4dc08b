"""Weight-only quantization schemes: per-channel symmetric int8 and group-wise int4, made once from a release's own
(verified) weights.

- `int8`: one float32 scale per output row, s = max|w| / 127, q = round(w / s) in [-127, 127] (gpt-fast's
  `WeightOnlyInt8QuantHandler`): 1 byte per weight plus 4 per row.
- `int4`: groups of 32 consecutive weights of a row, each with a float16 scale d = m / -8, m the group's
  largest-magnitude element (its sign kept), q = min(15, floor(w / d + 8.5)), two per byte: byte j of a group holds
  element j in its low nibble and j + 16 in its high one. These are llama.cpp's Q4_0 blocks, bit for bit (the
  scale and nibbles; m7b keeps the scales apart from the nibbles): 4.5 bits per weight. Groups of 32 (not gpt-fast's
  128) because the CPU kernel quantizes the activations in blocks of 32 (llama.cpp's q8_0), so one scale multiplies
  one integer dot product, and because the finer groups halve the int4 error.

A matrix whose row length is not a multiple of 32 is not quantized (`quantizable`): it stays in the release's
precision. Beside the schemes, `reference_matvec` is the CPU kernel's product in numpy, bit for bit (the same float
operations in the same order), which the tests hold the C kernel to.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from m7b.errors import InvalidInputError

GROUP = 32  # int4's group size and the activations' block in the CPU kernel
SCHEMES = ("int8", "int4")
ROWS_PER_CHUNK = 1024  # rows quantized at once: bounds the float32 copy of a matrix (4096 x 1024 x 4 = 16 MB)


@dataclass(frozen=True)
class QuantizedWeight:
    """One matrix (out_features x in_features) in a scheme: `q` (int8 (N, K), or uint8 (N, K/2) for int4) and
    `scales` (float32 (N,) for int8, float16 (N, K/32) for int4)."""

    scheme: str
    q: torch.Tensor
    scales: torch.Tensor

    @property
    def out_features(self) -> int:
        return int(self.q.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.q.shape[1]) * (2 if self.scheme == "int4" else 1)

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scales.nbytes


def check_scheme(name: str) -> str:
    key = name.strip().lower()
    if key not in SCHEMES:
        raise InvalidInputError(
            f"unknown weights {name!r} (weights): expected {' or '.join(SCHEMES)}, or leave weights out for the "
            "release's own precision",
            field="weights",
        )
    return key


def quantizable(shape: tuple[int, ...]) -> bool:
    """A matrix the schemes take: two dimensions, rows a whole number of 32-element groups."""
    return len(shape) == 2 and shape[0] > 0 and shape[1] > 0 and shape[1] % GROUP == 0


def quantized_shapes(scheme: str, shape: tuple[int, int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The shapes of (q, scales) for a matrix of `shape` in `scheme`."""
    n, k = shape
    return ((n, k), (n,)) if scheme == "int8" else ((n, k // 2), (n, k // GROUP))


def quantize(scheme: str, weight: torch.Tensor) -> QuantizedWeight:
    """`weight` (N, K, any float dtype) in `scheme`, a chunk of rows at a time (memory: the chunk in float32)."""
    if not quantizable(tuple(weight.shape)):
        raise InvalidInputError(
            f"a {tuple(weight.shape)} tensor cannot be quantized: expected a matrix with rows a multiple of {GROUP}"
        )
    q_shape, s_shape = quantized_shapes(scheme, (weight.shape[0], weight.shape[1]))
    q = torch.empty(q_shape, dtype=torch.int8 if scheme == "int8" else torch.uint8)
    scales = torch.empty(s_shape, dtype=torch.float32 if scheme == "int8" else torch.float16)
    for begin in range(0, weight.shape[0], ROWS_PER_CHUNK):
        rows = weight[begin : begin + ROWS_PER_CHUNK].float()
        part = _int8_rows(rows) if scheme == "int8" else _int4_rows(rows)
        q[begin : begin + rows.shape[0]], scales[begin : begin + rows.shape[0]] = part
    return QuantizedWeight(scheme, q, scales)


def _int8_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = rows.abs().amax(dim=1) / 127.0
    inverse = torch.where(scale > 0, 1.0 / scale, torch.zeros_like(scale))
    return torch.round(rows * inverse[:, None]).clamp_(-127, 127).to(torch.int8), scale


def _int4_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n, k = rows.shape
    groups = rows.view(n, k // GROUP, GROUP)
    at = groups.abs().argmax(dim=2, keepdim=True)
    d = groups.gather(2, at) / -8.0  # the largest-magnitude element maps to -8 (q = 0): Q4_0's scale
    inverse = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    q = torch.floor(groups * inverse + 8.5).clamp_(0, 15).to(torch.uint8)
    packed = q[..., : GROUP // 2] | (q[..., GROUP // 2 :] << 4)
    return packed.reshape(n, k // 2), d.squeeze(2).to(torch.float16)


def unpack_int4(q: torch.Tensor) -> torch.Tensor:
    """The int4 values (N, K) in [-8, 7] as int8, from their packed bytes (N, K/2)."""
    n = q.shape[0]
    groups = q.view(n, -1, GROUP // 2)
    low, high = (groups & 0x0F).to(torch.int8) - 8, (groups >> 4).to(torch.int8) - 8
    return torch.cat([low, high], dim=2).reshape(n, -1)


def dequantize(w: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The matrix the quantized values stand for, (N, K) in `dtype` (computed in float32)."""
    if w.scheme == "int8":
        return (w.q.float() * w.scales.float()[:, None]).to(dtype)
    values = unpack_int4(w.q).float().view(w.out_features, -1, GROUP)
    return (values * w.scales.float()[:, :, None]).reshape(w.out_features, -1).to(dtype)


def int4_pack_for_torch(w: QuantizedWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N, K) int32 in [0, 15], scales_and_zeros (K/32, N, 2)) in the form torch's int4 packed matmul
    takes (`_convert_weight_to_int4pack*` then `_weight_int4pack_mm*`): value = (q - 8) * scale + zero, zero 0."""
    values = (unpack_int4(w.q).to(torch.int32) + 8).contiguous()
    scales = w.scales.float().t().contiguous()  # (K/32, N)
    return values, torch.stack([scales, torch.zeros_like(scales)], dim=2).contiguous()


# --- the CPU kernel's arithmetic in numpy, bit for bit -------------------------------------------------------------


def bf16_bits_to_float(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def float_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to bf16 (nearest even; a NaN stays a quiet NaN), as the kernels' `float_to_bf16`."""
    u = values.astype(np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return np.where(nan, (u >> np.uint32(16)) | np.uint32(0x40), rounded).astype(np.uint16)


def reference_quantize_row(x_bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`m7b_quantize_row_q8`: the bf16 row (as uint16 bits, K a multiple of 32) in int8 blocks of 32 and their
    float32 scales."""
    x = bf16_bits_to_float(x_bits).reshape(-1, GROUP)
    d = (np.abs(x).max(axis=1) / np.float32(127.0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inverse = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    q = np.clip(np.rint((x * inverse[:, None]).astype(np.float32)), -127, 127).astype(np.int8)
    return q.reshape(-1), d


def reference_matvec(w: QuantizedWeight, x_bits: np.ndarray) -> np.ndarray:
    """`m7b_matvec_quant` in numpy: the bf16 bits (N,) of W . x for the bf16 row `x_bits` (K,), computed with the
    kernel's operations in the kernel's order: integer lanes per block of 32 (int8: 8, lane j = elements 4j..4j+3;
    int4: 4, lane j = elements 4j..4j+3 and 16+4j..16+4j+3, into float lanes 0-3 for an even block, 4-7 for an odd
    one), each float lane's sum over the blocks in order, the lanes summed as (l0+l4 + l1+l5) + (l2+l6 + l3+l7)."""
    xq, xd = reference_quantize_row(x_bits)
    n, blocks = w.out_features, w.in_features // GROUP
    values = w.q.numpy().astype(np.int32) if w.scheme == "int8" else unpack_int4(w.q).numpy().astype(np.int32)
    products = values.reshape(n, blocks, GROUP) * xq.astype(np.int32).reshape(1, blocks, GROUP)
    acc = np.zeros((n, 8), dtype=np.float32)
    if w.scheme == "int8":
        lanes = products.reshape(n, blocks, 8, 4).sum(axis=3)
        for b in range(blocks):
            acc = (acc + (lanes[:, b].astype(np.float32) * xd[b]).astype(np.float32)).astype(np.float32)
    else:
        halves = products.reshape(n, blocks, 2, 4, 4).sum(axis=(2, 4))  # lane j: 4j..4j+3 and 16+4j..16+4j+3
        d = (w.scales.numpy().astype(np.float32) * xd[None, :]).astype(np.float32)
        for b in range(blocks):
            part = (halves[:, b].astype(np.float32) * d[:, b : b + 1]).astype(np.float32)
            base = 4 * (b % 2)
            acc[:, base : base + 4] = (acc[:, base : base + 4] + part).astype(np.float32)
    total = ((acc[:, 0] + acc[:, 4]) + (acc[:, 1] + acc[:, 5])) + ((acc[:, 2] + acc[:, 6]) + (acc[:, 3] + acc[:, 7]))
    if w.scheme == "int8":
        total = (total * w.scales.numpy().astype(np.float32)).astype(np.float32)
    return float_to_bf16_bits(total.astype(np.float32))
