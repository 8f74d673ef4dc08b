"""The CPU decode step's bf16 matrix-vector kernel: built once from `matvec_bf16.c`, cached, chosen or declined.

A decode step on the CPU is a chain of matrix-vector products over weights memory-mapped from the checkpoint, so
its speed is the speed at which those products read bf16 weights. torch's bf16 GEMV on CPUs without native bf16
instructions (AVX2-only x86) reads 7-18 GB/s where the memory gives ~30 (bench/README.md); m7b's kernel streams at
the memory's bandwidth. It is compiled with the system C compiler into `<M7B_HOME>/cache/kernels/<key>/`, keyed by
the source, compiler, flags and machine, so a run builds it once; each process checks it against torch on a small
product before using it. `auto` uses it on the CPU for bf16 weights when the CPU has AVX2 and FMA and a C compiler
is found; otherwise torch's kernel, with the reason recorded (`MatVecChoice.note`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from m7b.errors import InvalidInputError

MATVEC_CHOICES = ("auto", "m7b", "torch")
KERNEL_NAME = "m7b-bf16-avx2"
TORCH_NAME = "torch"
SOURCE = Path(__file__).with_name("matvec_bf16.c")
LIBRARY_NAME = "libm7b_matvec_bf16.so"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
BUILD_TIMEOUT_S = 120.0

MatVecFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class BF16MatVec:
    """`F.linear(x, weight)` for one row of bf16 `x` and a contiguous bf16 CPU `weight`, by the compiled kernel;
    anything else goes to torch."""

    name = KERNEL_NAME

    def __init__(self, library: ctypes.CDLL, path: Path) -> None:
        self.path = path
        self._fn = library.m7b_matvec_bf16
        self._fn.restype = None
        self._fn.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_long,
            ctypes.c_long,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
        ]
        self._scratch: dict[int, torch.Tensor] = {}  # K floats per input width: the widened vector

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows, width = weight.shape
        if (
            x.numel() != width
            or x.shape[-1] != width
            or x.dtype != torch.bfloat16
            or weight.dtype != torch.bfloat16
            or x.device.type != "cpu"
            or weight.device.type != "cpu"
            or not weight.is_contiguous()
        ):
            return F.linear(x, weight)
        x = x.contiguous()
        scratch = self._scratch.get(width)
        if scratch is None:
            scratch = self._scratch[width] = torch.empty(width, dtype=torch.float32)
        y = torch.empty((*x.shape[:-1], rows), dtype=torch.bfloat16)
        threads = torch.get_num_threads()
        self._fn(weight.data_ptr(), x.data_ptr(), rows, width, y.data_ptr(), scratch.data_ptr(), threads)
        return y


@dataclass(frozen=True)
class MatVecChoice:
    kernel: BF16MatVec | None  # None: torch's own kernel
    note: str  # why this kernel: what was checked, or what was missing

    @property
    def name(self) -> str:
        return KERNEL_NAME if self.kernel else TORCH_NAME


def find_compiler() -> list[str] | None:
    """The C compiler command: $CC when set, else the first of cc, gcc, clang on PATH."""
    if os.environ.get("CC", "").strip():
        words = shlex.split(os.environ["CC"])
        return words if shutil.which(words[0]) else None
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return [found]
    return None


def cpu_supports_kernel() -> tuple[bool, str]:
    """The kernel needs x86-64 with AVX2 and FMA (torch's CPU capability AVX2 or AVX512 says both are there)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        return False, f"the kernel is written for x86-64 with AVX2; this CPU is {machine}"
    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in ("AVX2", "AVX512"):
        return False, f"the kernel needs AVX2 and FMA; torch reports this CPU's capability as {capability}"
    return True, capability


def _compiler_identity(compiler: list[str]) -> str:
    try:
        done = subprocess.run([*compiler, "--version"], capture_output=True, text=True, timeout=30)
        return done.stdout.splitlines()[0] if done.stdout else " ".join(compiler)
    except (OSError, subprocess.SubprocessError):
        return " ".join(compiler)


def build_key(compiler: list[str]) -> str:
    """What a built library depends on: the source, the compiler and its version, the flags, the machine."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    for part in (" ".join(compiler), _compiler_identity(compiler), " ".join(FLAGS), platform.machine()):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


class KernelBuildError(Exception):
    """The kernel could not be built or failed its check (auto falls back to torch; `m7b` reports it)."""


def build_library(compiler: list[str], folder: Path) -> Path:
    """Compile the kernel into `folder` (written under a temporary name, then renamed: never half a library)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / LIBRARY_NAME
    if target.is_file():
        return target
    partial = folder / f".{LIBRARY_NAME}.{os.getpid()}"
    command = [*compiler, *FLAGS, str(SOURCE), "-o", str(partial)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        partial.unlink(missing_ok=True)
        raise KernelBuildError(f"running {' '.join(command)} failed: {exc}") from exc
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise KernelBuildError(f"{compiler[0]} exited {done.returncode}: {' / '.join(tail)}")
    partial.replace(target)
    return target


def self_test(kernel: BF16MatVec) -> None:
    """The kernel against torch (float32 product rounded to bf16) on shapes with row and column tails."""
    generator = torch.Generator().manual_seed(0)
    for rows, width in ((4, 16), (7, 37), (66, 250), (129, 1024)):
        weight = torch.randn(rows, width, generator=generator).to(torch.bfloat16)
        x = torch.randn(1, 1, width, generator=generator).to(torch.bfloat16)
        got = kernel(x, weight).float()
        want = F.linear(x.float(), weight.float())
        error = (got - want).abs().max().item()
        bound = want.abs().max().item() / 64 + 1e-6
        if got.shape != want.shape or not error <= bound:
            raise KernelBuildError(
                f"self-test {rows}x{width}: max |difference| {error:.4g} from torch, above {bound:.4g}"
            )


def load_kernel(cache_root: Path | None) -> BF16MatVec:
    """Build (or find) the library under `cache_root`, load it, check it. A cached library that does not load or
    fails the check is removed and built again once; a cache folder the disk refuses (a read-only M7B_HOME) means
    a build in a temporary folder, removed once the library is loaded."""
    supported, detail = cpu_supports_kernel()
    if not supported:
        raise KernelBuildError(detail)
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C compiler found ($CC, cc, gcc or clang): install gcc to build it")
    if cache_root is not None:
        folder = Path(cache_root) / build_key(compiler)
        try:
            return _checked(build_library(compiler, folder))
        except KernelBuildError:
            (folder / LIBRARY_NAME).unlink(missing_ok=True)
            return _checked(build_library(compiler, folder))
        except OSError:
            pass  # the cache folder is refused: build where we may
    with tempfile.TemporaryDirectory(prefix="m7b-matvec-") as tmp:
        return _checked(build_library(compiler, Path(tmp)))


def _checked(path: Path) -> BF16MatVec:
    kernel = _open(path)
    self_test(kernel)
    return kernel


def _open(path: Path) -> BF16MatVec:
    try:
        return BF16MatVec(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError) as exc:  # not a loadable library, or one without the kernel's symbol
        raise KernelBuildError(f"could not load {path}: {exc}; remove it to rebuild") from exc


def choose_matvec(request: str, weight: torch.Tensor, cache_root: Path | None) -> MatVecChoice:
    """The kernel for single-row products with `weight`'s dtype and device. `request`: auto (m7b's kernel when it
    applies and builds, else torch's), m7b (m7b's kernel or an InvalidInputError saying why not) or torch."""
    key = request.strip().lower()
    if key not in MATVEC_CHOICES:
        raise InvalidInputError(
            f"unknown matrix-vector kernel {request!r}: expected one of {', '.join(MATVEC_CHOICES)}", field="matvec"
        )
    if key == TORCH_NAME:
        return MatVecChoice(None, "torch's kernel, as asked")
    reason = None
    if weight.device.type != "cpu":
        reason = f"the kernel is for the CPU; the weights are on {weight.device}"
    elif weight.dtype != torch.bfloat16:
        reason = f"the kernel reads bfloat16 weights; these are {str(weight.dtype).removeprefix('torch.')}"
    else:
        try:
            kernel = load_kernel(cache_root)
            return MatVecChoice(kernel, f"built from {SOURCE.name}, checked against torch ({kernel.path})")
        except KernelBuildError as exc:
            reason = str(exc)
    if key == "m7b":
        raise InvalidInputError(
            f"m7b's matrix-vector kernel cannot be used here: {reason}; use --matvec auto or torch", field="matvec"
        )
    return MatVecChoice(None, f"torch's kernel: {reason}")
