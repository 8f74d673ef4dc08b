"""m7b's quantized CPU kernels (`cpu_kernels_quant.c`) as torch functions, their build and their choice.

`QuantRowKernels.stack` is the product of one bf16 row with up to four `QuantizedLinear`s of one scheme (int8 per
channel, int4 in groups of 32) in one pass, the weights left where they are (memory-mapped from the cache);
`block_step` a whole TransformerBlock on one row. Every tensor whose pointer reaches C is checked first; inputs
the kernels do not take go to torch (`stack` computes the modules' own forward, `block_step` returns False).

The library is built like the bf16 kernels (`cpu_kernels_build.build_library`, cached under
`M7B_HOME/cache/kernels/<key>/`): with -mavx2 -mfma -mf16c where the CPU has AVX2 (the bf16 kernels' RMSNorm,
SwiGLU and attention compiled in, so a block is one call), else portable C (the same arithmetic, bit for bit;
products only). Each process checks it bit for bit against `quantize.reference_matvec` before using it.
"""

from __future__ import annotations

import ctypes
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from m7b.errors import InvalidInputError

from .cpu_kernels import BF16RowKernels, _attention_inputs, _bind, _is_plain, _is_row, _threads, position_args
from .cpu_kernels_build import (
    KERNEL_CHOICES,
    TORCH_NAME,
    KernelBuildError,
    _writable_folder,
    build_key,
    build_library,
    cpu_supports_kernel,
    find_compiler,
)
from .quantize import GROUP, QuantizedWeight, quantize, reference_matvec
from .quantized_linear import QuantizedLinear
from .row_kernels import DecodePosition

SOURCE = Path(__file__).with_name("cpu_kernels_quant.c")
BF16_SOURCE = Path(__file__).with_name("cpu_kernels_bf16.c")  # included by SOURCE in the AVX2 build
LIBRARY_NAME = "libm7b_cpu_kernels_quant.so"
AVX2_FLAGS = ("-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
PORTABLE_FLAGS = ("-O3", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC")
SCHEME_CODES = {"int8": 8, "int4": 4}
MAX_STACK = 4

_P, _L, _I, _F = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float


def _is_quantized(module: object, scheme: str, width: int) -> bool:
    return (
        isinstance(module, QuantizedLinear)
        and module.scheme == scheme
        and module.in_features == width
        and width % GROUP == 0
        and _is_plain(module.q, torch.int8 if scheme == "int8" else torch.uint8)
        and _is_plain(module.scales, torch.float32 if scheme == "int8" else torch.float16)
    )


class QuantRowKernels:
    """The compiled quantized kernels for one bf16 row. One object serves one thread (reused scratch)."""

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self.avx2 = bool(library.m7b_quant_has_avx2())
        self.name = f"m7b-quant-{'avx2' if self.avx2 else 'portable'}"
        self._matvec = _bind(library.m7b_matvec_quant, [_I, _P, _P, _P, _I, _P, _L, _P, _P, _P, _I])
        # the bf16 kernels (RMSNorm, SwiGLU, attention, the output product) of the same library, AVX2 build only
        self.bf16 = BF16RowKernels(library, path) if self.avx2 else None
        self._block = (
            _bind(
                library.m7b_block_step_quant,
                [_I, _P, _P, _P, _F, _P, _P, _L, _L, _L, _L, _L, _P, _P, _P, _L, _P, _L, _P, _P, _P, _P, _I],
            )
            if self.avx2
            else None
        )
        self._scratch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._buffers: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def _row_scratch(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        found = self._scratch.get(width)
        if found is None:
            found = self._scratch[width] = (
                torch.empty(width, dtype=torch.int8),
                torch.empty(width // GROUP + width // 4, dtype=torch.float32),
            )
        return found

    def stack(self, x: torch.Tensor, modules: tuple[object, ...]) -> torch.Tensor:
        """`torch.cat([m(x) for m in modules], -1)` for one bf16 row, in one pass when every module is a
        `QuantizedLinear` of one scheme (else each module's own forward)."""
        width = x.shape[-1]
        first = modules[0] if modules else None
        scheme = first.scheme if isinstance(first, QuantizedLinear) else ""
        takes = all(_is_quantized(m, scheme, width) for m in modules)
        if not (0 < len(modules) <= MAX_STACK and _is_row(x, width) and takes):
            return torch.cat([m(x) for m in modules], dim=-1)  # type: ignore[operator]
        linears = [m for m in modules if isinstance(m, QuantizedLinear)]
        rows = [m.out_features for m in linears]
        y = torch.empty((*x.shape[:-1], sum(rows)), dtype=torch.bfloat16)
        xq, xd = self._row_scratch(width)
        self._matvec(
            SCHEME_CODES[scheme],
            (ctypes.c_void_p * len(linears))(*(m.q.data_ptr() for m in linears)),
            (ctypes.c_void_p * len(linears))(*(m.scales.data_ptr() for m in linears)),
            (ctypes.c_long * len(linears))(*rows),
            len(linears),
            x.data_ptr(),
            width,
            y.data_ptr(),
            xq.data_ptr(),
            xd.data_ptr(),
            _threads(),
        )
        return y

    def __call__(self, x: torch.Tensor, module: object) -> torch.Tensor:
        return self.stack(x, (module,))

    def block_step(
        self,
        x: torch.Tensor,
        norms: tuple[torch.Tensor, torch.Tensor],
        eps: float,
        modules: tuple[object, ...],
        position: DecodePosition,
    ) -> bool:
        """A whole TransformerBlock on one decode row `x` (in place), its seven linears (`row_kernels.BLOCK_WEIGHTS`
        order) quantized in one scheme; False, with nothing touched, when the kernel does not take these inputs."""
        if self._block is None or len(modules) != 7:
            return False
        n_heads, n_kv_heads, head_dim = position.heads
        dim = x.shape[-1]
        first = modules[0]
        scheme = first.scheme if isinstance(first, QuantizedLinear) else ""
        linears = [m for m in modules if isinstance(m, QuantizedLinear)]
        if len(linears) != 7 or not _is_row(x, dim):
            return False
        hidden = linears[4].out_features
        q_size, kv_size = n_heads * head_dim, n_kv_heads * head_dim
        shapes = [(q_size, dim), (kv_size, dim), (kv_size, dim), (dim, q_size), (hidden, dim), (hidden, dim)]
        shapes.append((dim, hidden))
        fits = all(
            (m.out_features, m.in_features) == s and _is_quantized(m, scheme, s[1])
            for m, s in zip(linears, shapes, strict=True)
        )
        if not (fits and len(norms) == 2 and all(n.shape == (dim,) and _is_plain(n) for n in norms)):
            return False
        checked = _attention_inputs(position)
        if checked is None:
            return False
        pairs, slot, capacity = checked
        key = (dim, hidden, n_heads, n_kv_heads, head_dim, capacity)
        buffers = self._buffers.get(key)
        if buffers is None:
            work = torch.empty(2 * dim + q_size + 2 * kv_size + q_size + 3 * hidden, dtype=torch.bfloat16)
            scratch = torch.empty(max(dim, hidden, q_size, n_heads * (2 * head_dim + capacity) + capacity + 2))
            buffers = self._buffers[key] = (work, scratch)
        work, scratch = buffers
        xq, xd = self._row_scratch(max(dim, hidden, q_size))
        self._block(
            SCHEME_CODES[scheme],
            x.data_ptr(),
            norms[0].data_ptr(),
            norms[1].data_ptr(),
            eps,
            (ctypes.c_void_p * 7)(*(m.q.data_ptr() for m in linears)),
            (ctypes.c_void_p * 7)(*(m.scales.data_ptr() for m in linears)),
            dim,
            hidden,
            n_heads,
            n_kv_heads,
            head_dim,
            *position_args(position, pairs, slot, capacity),
            work.data_ptr(),
            scratch.data_ptr(),
            xq.data_ptr(),
            xd.data_ptr(),
            _threads(),
        )
        return True


def self_test(kernels: QuantRowKernels) -> None:
    """Each scheme's product bit for bit against `quantize.reference_matvec`, on shapes with row tails, a stack."""
    generator = torch.Generator().manual_seed(0)
    for scheme in SCHEME_CODES:
        for rows, width in ((5, 32), (67, 96), (130, 512), (9, 352)):
            weight = torch.randn(rows, width, generator=generator).to(torch.bfloat16)
            other = torch.randn(rows + 3, width, generator=generator).to(torch.bfloat16)
            x = torch.randn(1, 1, width, generator=generator).to(torch.bfloat16)
            first, second = QuantizedLinear(quantize(scheme, weight)), QuantizedLinear(quantize(scheme, other))
            got = kernels.stack(x, (first, second)).reshape(-1).view(torch.int16).numpy().view(np.uint16)
            bits = x.reshape(-1).view(torch.int16).numpy().view(np.uint16)
            want = np.concatenate([reference_matvec(m.weight_q, bits) for m in (first, second)])
            if got.shape != want.shape or not np.array_equal(got, want):
                wrong = int((got != want).sum()) if got.shape == want.shape else -1
                raise KernelBuildError(
                    f"self-test {scheme} product {rows}+{rows + 3}x{width}: {wrong} of {want.size} outputs differ from "
                    "the reference (a miscompiled library or a compiler bug): torch's kernels are used"
                )


def cpu_vnni_flags(cpuinfo: str | None = None) -> tuple[str, ...]:
    """The compiler flags for the CPU's 256-bit integer dot products (one dpbusd for maddubs + madd), per
    /proc/cpuinfo: AVX-VNNI's VEX form, else AVX512-VNNI on 256-bit registers (AVX512VL; the compiler told to keep
    to 256-bit vectors), else none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
        except OSError:
            return ()
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    if "avx_vnni" in flags:
        return ("-mavxvnni",)
    if {"avx512_vnni", "avx512vl", "avx512f"} <= set(flags):
        return ("-mavx512vnni", "-mavx512vl", "-mprefer-vector-width=256")
    return ()


def build_flags() -> tuple[str, ...]:
    """AVX2 (+ VNNI where the CPU has it: the same integers, so the same bits) or portable C."""
    if not cpu_supports_kernel()[0]:
        return PORTABLE_FLAGS
    return (*AVX2_FLAGS, *cpu_vnni_flags())


def load_quant_kernels(cache_root: Path | None) -> QuantRowKernels:
    """Build (or find) the library under `cache_root`, load it, check it bit for bit. A damaged cached library is
    rebuilt once; a folder the disk refuses means a build in a temporary folder."""
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C compiler found (cc, gcc or clang on PATH, or $CC): install gcc to build them")
    flags = build_flags()

    def build(folder: Path) -> Path:
        return build_library(compiler, folder, SOURCE, LIBRARY_NAME, flags)

    folder = Path(cache_root) / build_key(compiler, (SOURCE, BF16_SOURCE), flags) if cache_root is not None else None
    if folder is not None and _writable_folder(folder):
        target = folder / LIBRARY_NAME
        if not target.is_file():
            return _checked(build(folder))
        try:
            return _checked(target)
        except KernelBuildError:
            try:
                target.unlink()
                fresh: Path | None = build(folder)
            except OSError:
                fresh = None
            if fresh is not None:
                with tempfile.TemporaryDirectory(prefix="m7b-quant-kernels-") as tmp:
                    copy = Path(tmp) / LIBRARY_NAME  # the loader hands back a loaded library by name
                    shutil.copyfile(fresh, copy)
                    kernels = _checked(copy)
                kernels.path = fresh
                return kernels
    with tempfile.TemporaryDirectory(prefix="m7b-quant-kernels-") as tmp:
        return _checked(build(Path(tmp)))


def _checked(path: Path) -> QuantRowKernels:
    try:
        kernels = QuantRowKernels(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError) as exc:
        raise KernelBuildError(f"could not load {path} ({exc}): a damaged or foreign file; remove it") from exc
    self_test(kernels)
    return kernels


@dataclass(frozen=True)
class QuantKernelChoice:
    kernels: QuantRowKernels | None
    note: str

    @property
    def name(self) -> str:
        return self.kernels.name if self.kernels else TORCH_NAME


def choose_quant_kernels(request: str, weight: QuantizedWeight | None, cache_root: Path | None) -> QuantKernelChoice:
    """The quantized model's single-row kernels (`request` as for `cpu_kernels_build.choose_kernels`)."""
    key = request.strip().lower()
    if key not in KERNEL_CHOICES:
        raise InvalidInputError(
            f"unknown CPU kernels {request!r} (cpu_kernels): expected one of {', '.join(KERNEL_CHOICES)}",
            field="cpu_kernels",
        )
    if key == TORCH_NAME:
        return QuantKernelChoice(None, "torch's kernels, as asked")
    reason = None
    if weight is None:
        reason = "no linear of this model is quantized"
    elif weight.q.device.type != "cpu":
        reason = f"the kernels are for the CPU; the weights are on {weight.q.device}"
    else:
        try:
            kernels = load_quant_kernels(cache_root)
            how = "AVX2" if kernels.avx2 else "portable C (no AVX2 here)"
            return QuantKernelChoice(kernels, f"built from {SOURCE.name} ({how}), checked bit for bit ({kernels.path})")
        except KernelBuildError as exc:
            reason = str(exc)
    if key == "m7b":
        raise InvalidInputError(
            f"m7b's CPU kernels cannot be used here: {reason}; choose auto or torch (cpu_kernels)", field="cpu_kernels"
        )
    return QuantKernelChoice(None, f"torch's kernels: {reason}")
