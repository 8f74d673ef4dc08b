"""GGUF tensor encodings written by m7b itself, bit for bit as llama.cpp writes them (vectorised numpy).

- `bf16`: the checkpoint's bytes; a NaN gets its quiet bit set, as gguf-py's bf16 rounding does.
- `f16`, `f32`: numpy's IEEE round-to-nearest-even, as the converter's `astype` and ggml's fp32->fp16.
- `q8_0`, `q4_0`, `q6_k`: ggml's reference quantizers (`quantize_row_{q8_0,q4_0,q6_K}_ref` in ggml-quants.c,
  which `llama-quantize` runs without an importance matrix), each float32 operation in the same order, on float32.
  x86-64's baseline (ggml-base is built without FMA) never fuses a multiply-add, so neither does this.

`choose_type` is `llama-quantize`'s choice of type per tensor for a dense llama model (llama-quant.cpp
`tensor_allows_quantization`, `llama_tensor_get_type_impl`, `tensor_type_fallback`), documented in docs/gguf.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

QK = 32  # q8_0 and q4_0 block length
QK_K = 256  # q6_K super-block length
GROUP_MAX_EPS = np.float32(1e-15)


@dataclass(frozen=True)
class GGMLType:
    """A GGUF tensor type: its name in gguf-py (`GGMLQuantizationType`), elements per block, bytes per block."""

    name: str
    block: int
    block_bytes: int

    def nbytes(self, shape: tuple[int, ...]) -> int:
        rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        return rows * (shape[-1] // self.block) * self.block_bytes


F32 = GGMLType("F32", 1, 4)
F16 = GGMLType("F16", 1, 2)
BF16 = GGMLType("BF16", 1, 2)
Q8_0 = GGMLType("Q8_0", QK, 2 + QK)
Q4_0 = GGMLType("Q4_0", QK, 2 + QK // 2)
Q6_K = GGMLType("Q6_K", QK_K, QK_K // 2 + QK_K // 4 + QK_K // 16 + 2)

# `m7b convert --to gguf --type T`: the file's type (llama.cpp's LLAMA_FTYPE_MOSTLY_*, general.file_type) and
# the type its 2-D weights get
FILE_TYPES = {"bf16": (32, BF16), "f16": (1, F16), "q8_0": (7, Q8_0), "q4_0": (2, Q4_0)}
QUANTIZED = ("q8_0", "q4_0")


def choose_type(name: str, shape: tuple[int, ...], file_type: str, experts: int = 0) -> GGMLType:
    """The type llama.cpp gives tensor `name` (GGUF name, numpy shape) in a file of `file_type`, for a model of
    `experts` experts per layer (0: dense).

    bf16/f16 as `convert_hf_to_gguf.py` does: 1-D tensors, norms and a Mixtral's router (`ffn_gate_inp`) f32, the
    rest the file's type. q8_0/q4_0 as `llama-quantize` does from the bf16 file: 1-D, norms and the router stay f32;
    output.weight in a q4_0 file is q6_K (q8_0 when its rows are not a multiple of 256 long); in a model of exactly 8
    experts (Mixtral), attn_k and attn_v are q8_0 ("trades just ~128MB", llama-quant.cpp); a weight whose rows are
    not a multiple of 32 long falls back to f16; everything else is the file's type.
    """
    if len(shape) < 2 or name.endswith(("_norm.weight", "ffn_gate_inp.weight")):
        return F32
    target = FILE_TYPES[file_type][1]
    if file_type not in QUANTIZED:
        return target
    ncols = shape[-1]
    if name == "output.weight" and target is not Q8_0:
        target = Q8_0 if ncols % target.block else Q6_K
        if ncols % target.block:  # tensor_type_fallback: q6_K -> q8_0
            target = Q8_0
    if experts == 8 and name.endswith(("attn_k.weight", "attn_v.weight")):
        target = Q8_0
    if ncols % target.block:
        return F16  # tensor_type_fallback: no 32-element block type fits ("unusual shape")
    return target


def bf16_to_f32(raw: NDArray[np.uint16]) -> NDArray[np.float32]:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: NDArray[np.float32]) -> NDArray[np.uint16]:
    """gguf-py's bf16 rounding (round to nearest even; a NaN quietened), what the converter writes."""
    n = np.ascontiguousarray(x, np.float32).view(np.uint32)
    n = np.where((n & 0x7FFFFFFF) > 0x7F800000, (n & np.uint32(0xFFFF0000)) | np.uint32(64 << 16), n)
    return ((n.astype(np.uint64) + (0x7FFF + ((n >> 16) & 1))) >> 16).astype(np.uint16)


def to_f32(values: NDArray[np.generic]) -> NDArray[np.float32]:
    """A source tensor's values as float32 (bf16 arrives as its uint16 bits; float16/float32 as themselves)."""
    if values.dtype == np.uint16:
        return bf16_to_f32(values)  # type: ignore[arg-type]  # uint16 here is bf16 bits
    return values.astype(np.float32)


def encode(values: NDArray[np.generic], kind: GGMLType) -> NDArray[np.uint8]:
    """The tensor (bf16 bits as uint16, or float16/float32; numpy shape, rows last) in GGUF type `kind`, as raw
    bytes (rows of blocks)."""
    if kind is BF16 and values.dtype == np.uint16:  # bf16 to bf16: the bits, a NaN quietened as gguf-py does
        bits = values.view(np.uint16)
        nan = (bits & 0x7FFF) > 0x7F80
        out = np.where(nan, bits | 0x0040, bits).astype(np.uint16) if nan.any() else bits
        return np.ascontiguousarray(out).view(np.uint8).reshape(-1)
    x = to_f32(values)
    if kind is BF16:
        return f32_to_bf16(x).view(np.uint8).reshape(-1)
    if kind is F32:
        return np.ascontiguousarray(x).view(np.uint8).reshape(-1)
    if kind is F16:
        return np.ascontiguousarray(x.astype(np.float16)).view(np.uint8).reshape(-1)
    rows = x.reshape(-1, kind.block)
    if kind is Q8_0:
        return quantize_q8_0(rows)
    if kind is Q4_0:
        return quantize_q4_0(rows)
    if kind is Q6_K:
        return quantize_q6_k(rows)
    raise ValueError(f"no encoder for GGUF type {kind.name}")


def _fp16_bits(d: NDArray[np.float32]) -> NDArray[np.uint8]:
    return d.astype(np.float16).view(np.uint8).reshape(-1, 2)


_JUST_BELOW_HALF = np.nextafter(np.float32(0.5), np.float32(0))


def quantize_q8_0(x: NDArray[np.float32]) -> NDArray[np.uint8]:
    """quantize_row_q8_0_ref: d = amax/127 (fp16), q = roundf(x * (1/d)) (half away from zero)."""
    amax = np.abs(x).max(axis=1)  # fabsf: a block of -0.0 has amax +0.0
    d = (amax / np.float32(127)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    scaled = x * inv[:, None]
    # C's roundf for |v| <= 127.5: trunc(v + copysign(nextafter(0.5, 0), v)) in float32 is exact (a fraction below
    # one half never reaches the next integer, exactly one half always does: round-half-even breaks the one tie)
    scaled += np.copysign(_JUST_BELOW_HALF, scaled)
    q = np.trunc(scaled).astype(np.int8)
    return np.concatenate([_fp16_bits(d), q.view(np.uint8)], axis=1).reshape(-1)


def _signed_max(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Per row, the first element of largest magnitude, with its sign (the loops' `if (amax < fabsf(v))`); +0.0 for
    a row of zeros, whatever their signs (the loop never replaces its initial `max = 0.0f`)."""
    picked = x[np.arange(x.shape[0]), np.abs(x).argmax(axis=1)]
    return np.where(picked == 0, np.float32(0), picked).astype(np.float32)


def quantize_q4_0(x: NDArray[np.float32]) -> NDArray[np.uint8]:
    """quantize_row_q4_0_ref: d = max/-8 (the signed extreme, fp16), q = min(15, (int8)(x * (1/d) + 8.5))."""
    d = (_signed_max(x) / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
    v = (x * inv[:, None]).astype(np.float32) + np.float32(8.5)
    q = np.minimum(15, np.trunc(v).astype(np.int8)).astype(np.uint8)
    half = QK // 2
    packed = q[:, :half] | (q[:, half:] << 4)
    return np.concatenate([_fp16_bits(d), packed], axis=1).reshape(-1)


def _nearest_int(v: NDArray[np.float32]) -> NDArray[np.int32]:
    """ggml's nearest_int: round half to even (the 1.5 * 2^23 trick)."""
    return np.rint(v).astype(np.int32)


def _make_qx_quants(x: NDArray[np.float32], nmax: int) -> tuple[NDArray[np.float32], NDArray[np.int32]]:
    """make_qx_quants(n=16, nmax, x, L, rmse_type=1, NULL) on every row of `x` at once: the scale and levels.

    Worked column-major (one contiguous array per position in the row), so the in-order sums stream through memory."""
    f = np.float32
    rows = x.shape[0]
    xt = np.ascontiguousarray(x.T)  # (n, rows)
    n = xt.shape[0]
    absx = np.abs(xt)
    idx = absx.argmax(axis=0)
    amax = absx[idx, np.arange(rows)]
    mx = xt[idx, np.arange(rows)]
    zero = amax < GROUP_MAX_EPS
    safe = np.where(zero, f(1), mx).astype(f)
    wx = (xt * xt) * xt  # w*x[i] with w = x[i]*x[i], as the C loop computes it
    w = xt * xt

    def levels(iscale: NDArray[np.float32]) -> NDArray[np.int32]:
        return np.clip(_nearest_int(iscale[None, :] * xt), -nmax, nmax - 1)

    def sums(lv: NDArray[np.int32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        lf = lv.astype(f)
        sumlx = np.zeros(rows, f)
        suml2 = np.zeros(rows, f)
        for i in range(n):  # in order, as the C loop accumulates
            sumlx += wx[i] * lf[i]
            suml2 += (w[i] * lf[i]) * lf[i]
        return sumlx, suml2

    iscale = (f(-nmax) / safe).astype(f)
    lv = levels(iscale)
    sumlx, suml2 = sums(lv)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, f(0)).astype(f)
    best = (scale * sumlx).astype(f)
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = (-(f(nmax) + f(0.1) * f(step)) / safe).astype(f)
        cand = levels(iscale)
        sumlx, suml2 = sums(cand)
        better = (suml2 > 0) & ((sumlx * sumlx).astype(f) > (best * suml2).astype(f))
        if better.any():
            lv = np.where(better[None, :], cand, lv)
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = np.where(better, sumlx / suml2, scale).astype(f)
            best = np.where(better, scale * sumlx, best).astype(f)
    scale = np.where(zero, f(0), scale).astype(f)
    lv = np.where(zero[None, :], -nmax, lv)  # all-zero: L = 0, i.e. level -nmax
    return scale, np.ascontiguousarray((lv + nmax).T)


def quantize_q6_k(x: NDArray[np.float32]) -> NDArray[np.uint8]:
    """quantize_row_q6_K_ref: 16 sub-blocks of 16 with their own scale (make_qx_quants, nmax 32), the scales
    quantized to int8 against the super-block's fp16 d, then the levels recomputed against the rounded scales."""
    f = np.float32
    blocks = x.shape[0]
    sub = x.reshape(blocks * 16, 16)
    scales, levels = _make_qx_quants(sub, 32)
    scales = scales.reshape(blocks, 16)
    levels = levels.reshape(blocks, 16, 16)
    abs_scales = np.abs(scales)
    pick = abs_scales.argmax(axis=1)
    max_scale = scales[np.arange(blocks), pick]
    empty = abs_scales[np.arange(blocks), pick] < GROUP_MAX_EPS
    safe = np.where(empty, f(1), max_scale).astype(f)
    iscale = (f(-128) / safe).astype(f)
    d16 = (f(1) / iscale).astype(np.float16)
    q_scales = np.minimum(127, _nearest_int((iscale[:, None] * scales).astype(f))).astype(np.int8)
    dsub = (d16.astype(f)[:, None] * q_scales.astype(f)).astype(f)
    xs = x.reshape(blocks, 16, 16)
    with np.errstate(divide="ignore", invalid="ignore"):
        fresh = np.clip(_nearest_int((xs / dsub[:, :, None]).astype(f)), -32, 31) + 32
    levels = np.where((dsub != 0)[:, :, None], fresh, levels).reshape(blocks, QK_K).astype(np.uint8)
    ql = np.empty((blocks, QK_K // 2), np.uint8)
    qh = np.empty((blocks, QK_K // 4), np.uint8)
    for half in range(2):
        lv = levels[:, 128 * half : 128 * (half + 1)]
        a, b, c, e = lv[:, 0:32], lv[:, 32:64], lv[:, 64:96], lv[:, 96:128]
        ql[:, 64 * half : 64 * half + 32] = (a & 0xF) | ((c & 0xF) << 4)
        ql[:, 64 * half + 32 : 64 * half + 64] = (b & 0xF) | ((e & 0xF) << 4)
        qh[:, 32 * half : 32 * half + 32] = (a >> 4) | ((b >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6)
    d_bits = np.where(empty, np.float16(0), d16).astype(np.float16).view(np.uint8).reshape(-1, 2)
    q_scales = np.where(empty[:, None], np.int8(0), q_scales)
    ql = np.where(empty[:, None], np.uint8(0), ql)
    qh = np.where(empty[:, None], np.uint8(0), qh)
    return np.concatenate([ql, qh, q_scales.view(np.uint8), d_bits], axis=1).reshape(-1)
