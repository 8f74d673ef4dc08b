"""Building, caching, checking and choosing m7b's CPU kernels (`cpu_kernels.BF16RowKernels`).

The library is compiled from `cpu_kernels_bf16.c` with the system C compiler into `<M7B_HOME>/cache/kernels/<key>/`,
keyed by the source, compiler, flags and machine, so a run builds it once; each process checks it against torch on
small inputs before using it. `auto` uses it on the CPU for bf16 weights when the CPU has AVX2 and FMA and a C
compiler is found; otherwise torch's kernels, with the reason recorded (`KernelChoice.note`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from m7b.errors import InvalidInputError
from m7b.owned import own_dir, remove_own

from .attention import band_mask, grouped_attention, grouped_mask
from .cpu_kernels import KERNEL_NAME, BF16RowKernels
from .model import apply_rotary_emb
from .row_kernels import DecodePosition

KERNEL_CHOICES = ("auto", "m7b", "torch")
TORCH_NAME = "torch"
SOURCE = Path(__file__).with_name("cpu_kernels_bf16.c")
LIBRARY_NAME = "libm7b_cpu_kernels_bf16.so"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
LIBS = ("-lm",)
BUILD_TIMEOUT_S = 120.0


class KernelBuildError(Exception):
    """The kernels could not be built, loaded or checked (internal: `choose_kernels` turns it into a fallback to
    torch with the reason, or into an InvalidInputError when m7b's kernels were asked for)."""


@dataclass(frozen=True)
class KernelChoice:
    kernels: BF16RowKernels | None  # None: torch's own kernels
    note: str  # why these kernels: what was checked, or what was missing

    @property
    def name(self) -> str:
        return KERNEL_NAME if self.kernels else TORCH_NAME


def find_compiler() -> list[str] | None:
    """The C compiler command: $CC when set (a KernelBuildError when it names no command), else the first of cc,
    gcc, clang on PATH; None when there is none."""
    value = os.environ.get("CC", "").strip()
    if value:
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise KernelBuildError(f"$CC is {value!r}, which does not parse as a command ({exc}); fix CC") from exc
        if not words or not shutil.which(words[0]):
            raise KernelBuildError(
                f"$CC is {value!r}, which is not a command on PATH; point CC at a C compiler or unset it"
            )
        return words
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


def build_key(compiler: list[str], sources: tuple[Path, ...] = (SOURCE,), flags: tuple[str, ...] = FLAGS) -> str:
    """What a built library depends on: the sources, the compiler and its version, the flags, the machine."""
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources))
    for part in (" ".join(compiler), _compiler_identity(compiler), " ".join(flags), platform.machine()):
        digest.update(b"\0" + part.encode())
    return digest.hexdigest()[:16]


def build_library(
    compiler: list[str],
    folder: Path,
    source: Path = SOURCE,
    name: str = LIBRARY_NAME,
    flags: tuple[str, ...] = FLAGS,
) -> Path:
    """Compile the kernels (`source` into library `name`; the quantized kernels pass theirs) into `folder` (written
    under a temporary name, then renamed: never half a library)."""
    own_dir(folder, folder.parent)  # a symlink there: LinkInTheWayError, exit 6
    target = folder / name
    if target.is_file():
        return target
    partial = folder / f".{name}.{os.getpid()}.{threading.get_ident()}"
    remove_own(partial)  # m7b's own temporary name: whatever is there (a link) goes, never what it leads to
    command = [*compiler, *flags, f"-I{source.parent}", str(source), "-o", str(partial), *LIBS]
    try:
        # its own process group, so that a compiler past the timeout goes with every process it started
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
    except OSError as exc:
        raise KernelBuildError(f"could not start the C compiler {compiler[0]}: {exc}; install gcc or set CC") from exc
    try:
        stdout, stderr = proc.communicate(timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        partial.unlink(missing_ok=True)
        raise KernelBuildError(
            f"the C compiler {compiler[0]} was still running after {BUILD_TIMEOUT_S:.0f} s and was stopped; check it "
            "compiles a small C file, or set CC to another compiler"
        ) from exc
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = (stderr or stdout).strip().splitlines()[-3:]
        raise KernelBuildError(
            f"{compiler[0]} exited {proc.returncode} building {source.name}: {' / '.join(tail)}; the compiler needs "
            f"{' '.join(f for f in flags if f.startswith('-m') or f == '-fopenmp')} (gcc or clang with libgomp)"
        )
    partial.replace(target)
    return target


def _compare(what: str, got: torch.Tensor | None, want: torch.Tensor) -> None:
    if got is None:
        raise KernelBuildError(f"self-test {what}: the kernel declined plain inputs: torch's kernels are used")
    error = (got.float() - want.float()).abs().max().item()
    bound = want.float().abs().max().item() / 64 + 1e-6
    if got.shape != want.shape or not error <= bound:
        raise KernelBuildError(
            f"self-test {what}: max |difference| {error:.4g} from torch, above {bound:.4g} (a miscompiled library or "
            "a compiler bug): torch's kernels are used"
        )


def self_test(kernels: BF16RowKernels) -> None:
    """Each kernel against torch (float32 products rounded to bf16) on shapes with row and column tails."""
    generator = torch.Generator().manual_seed(0)
    for rows, width in ((4, 16), (7, 37), (66, 250), (129, 1024)):
        weight = torch.randn(rows, width, generator=generator).to(torch.bfloat16)
        extra = torch.randn(rows + 3, width, generator=generator).to(torch.bfloat16)
        x = torch.randn(1, 1, width, generator=generator).to(torch.bfloat16)
        _compare(f"product {rows}x{width}", kernels(x, weight), F.linear(x.float(), weight.float()))
        want = torch.cat([F.linear(x.float(), weight.float()), F.linear(x.float(), extra.float())], dim=-1)
        _compare(f"stacked product {rows}+{rows + 3}x{width}", kernels.stack(x, (weight, extra)), want)
        norm = kernels.rms_norm(x, weight[0], 1e-5)
        xf = x.float()
        _compare(f"RMSNorm {width}", norm, xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * weight[0])
        gate, up = x * 4, torch.flip(x, (-1,))
        _compare(f"SwiGLU {width}", kernels.swiglu(gate, up), F.silu(gate.float()) * up.float())
    logits = torch.randn(1000, generator=generator).to(torch.bfloat16)
    logits[[17, 400]] = 9.0  # a tie: the first
    if kernels.argmax(logits) != 17:
        raise KernelBuildError(
            "self-test greedy pick: not torch's argmax (a miscompiled library): torch's kernels are used"
        )
    slot_pos = torch.randint(-1, 60, (48,), generator=generator)
    if not torch.equal(kernels.position_mask(slot_pos, 40, 16), band_mask(torch.tensor([40]), slot_pos, 16)[0]):
        raise KernelBuildError(
            "self-test position mask: not the model's band (a miscompiled library): torch's kernels are used"
        )
    # groups of 2, 4 (one full batch of heads) and 5 (a full batch and a short one); a head with a 16-wide tail
    for n_heads, n_kv_heads, head_dim in ((4, 2, 16), (6, 3, 24), (8, 2, 32), (10, 2, 40)):
        _self_test_attention(kernels, n_heads, n_kv_heads, head_dim, generator)


def reference_attention(qkv: torch.Tensor, position: DecodePosition) -> tuple[torch.Tensor, torch.Tensor]:
    """What `attention_step` computes, in the model's own torch code (`model.apply_rotary_emb`,
    `attention.grouped_attention`) in float32, the rotations rounded to qkv's dtype as the model rounds them, without
    touching `position`'s caches: (the heads' outputs (1, 1, n_heads * head_dim), the rotated keys the step writes at
    the slot (n_kv_heads, head_dim))."""
    n_heads, n_kv, head_dim = position.heads
    freqs = position.freqs
    pairs = (torch.view_as_real(freqs) if freqs.is_complex() else freqs).reshape(1, head_dim // 2, 2)
    slot = int(position.slots.reshape(()).item())
    q, k, v = qkv.reshape(1, 1, -1, head_dim).split([n_heads, n_kv, n_kv], dim=2)  # (1, 1, heads, head_dim)
    q, k = apply_rotary_emb(q, pairs).float(), apply_rotary_emb(k, pairs).float()
    keys, values = position.k_cache.float().clone(), position.v_cache.float().clone()
    keys[:, :, slot], values[:, :, slot] = k[:, 0], v[:, 0].float()
    mask = grouped_mask(position.mask.reshape(1, -1), n_heads // n_kv)
    y = grouped_attention(q.transpose(1, 2), keys, values, mask)
    return y.transpose(1, 2).reshape(1, 1, -1), k[0, 0]


def _self_test_attention(kernels: BF16RowKernels, n_heads: int, n_kv: int, head_dim: int, gen: torch.Generator) -> None:
    """attention_step against `reference_attention`, 9 of 12 slots visible."""
    capacity, slot = 12, 5
    qkv = torch.randn(1, 1, (n_heads + 2 * n_kv) * head_dim, generator=gen).to(torch.bfloat16)
    angles = torch.rand(head_dim // 2, generator=gen) * 6
    pairs = torch.stack([angles.cos(), angles.sin()], dim=-1).contiguous()
    k_cache = torch.randn(1, n_kv, capacity, head_dim, generator=gen).to(torch.bfloat16)
    v_cache = torch.randn(1, n_kv, capacity, head_dim, generator=gen).to(torch.bfloat16)
    mask = torch.ones(1, capacity, dtype=torch.bool)
    mask[0, [0, 7, 11]] = False
    position = DecodePosition(pairs, k_cache, v_cache, torch.tensor([slot]), mask, (n_heads, n_kv, head_dim))
    want, written = reference_attention(qkv, position)
    got = kernels.attention_step(qkv, position)
    if got is None:
        raise KernelBuildError(f"self-test attention {n_heads}/{n_kv} heads of {head_dim}: the kernel declined")
    _compare(f"attention {n_heads}/{n_kv} heads of {head_dim}", got, want)
    _compare("attention's cache write", k_cache[0, :, slot], written)


def load_kernels(cache_root: Path | None) -> BF16RowKernels:
    """Build (or find) the library under `cache_root`, load it, check it.

    A library found in the cache that does not load or fails the check is removed and built again (once; a build
    that fails is not retried). A cache folder the disk refuses (a read-only M7B_HOME, a file in the way) means a
    build in a temporary folder, removed once the library is loaded."""
    supported, detail = cpu_supports_kernel()
    if not supported:
        raise KernelBuildError(detail)
    compiler = find_compiler()
    if compiler is None:
        raise KernelBuildError("no C compiler found (cc, gcc or clang on PATH, or $CC): install gcc to build them")
    folder = Path(cache_root) / build_key(compiler) if cache_root is not None else None
    if folder is not None and _writable_folder(folder):
        target = folder / LIBRARY_NAME
        if not target.is_file():
            return _checked(build_library(compiler, folder))
        try:
            return _checked(target)
        except KernelBuildError:
            try:
                target.unlink()
                fresh = build_library(compiler, folder)
            except OSError:
                fresh = None
            if fresh is not None:
                # this process may hold the damaged file's mapping under that name: load the new one by another
                return _checked_copy(fresh)
    with tempfile.TemporaryDirectory(prefix="m7b-cpu-kernels-") as tmp:
        return _checked(build_library(compiler, Path(tmp)))


def _writable_folder(folder: Path) -> bool:
    try:
        own_dir(folder, folder.parent)  # a symlink there: LinkInTheWayError, exit 6
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def _checked(path: Path) -> BF16RowKernels:
    kernels = _open(path)
    self_test(kernels)
    return kernels


def _checked_copy(path: Path) -> BF16RowKernels:
    """`_checked` on a copy under a new name: the dynamic loader hands back an already loaded library by name."""
    with tempfile.TemporaryDirectory(prefix="m7b-cpu-kernels-") as tmp:
        copy = Path(tmp) / LIBRARY_NAME
        shutil.copyfile(path, copy)
        kernels = _checked(copy)
    kernels.path = path
    return kernels


def _open(path: Path) -> BF16RowKernels:
    try:
        return BF16RowKernels(ctypes.CDLL(str(path)), path)
    except (OSError, AttributeError) as exc:  # not a loadable library, or one without the kernel's symbol
        raise KernelBuildError(f"could not load {path} ({exc}): a damaged or foreign file; remove it") from exc


def choose_kernels(request: str, weight: torch.Tensor, cache_root: Path | None) -> KernelChoice:
    """The single-row kernels for `weight`'s dtype and device. `request`: auto (m7b's kernels when they apply and
    build, else torch's), m7b (m7b's or an InvalidInputError saying why not) or torch."""
    key = request.strip().lower()
    if key not in KERNEL_CHOICES:
        raise InvalidInputError(
            f"unknown CPU kernels {request!r} (cpu_kernels): expected one of {', '.join(KERNEL_CHOICES)}",
            field="cpu_kernels",
        )
    if key == TORCH_NAME:
        return KernelChoice(None, "torch's kernels, as asked")
    reason = None
    if weight.device.type != "cpu":
        reason = f"the kernels are for the CPU; the weights are on {weight.device}"
    elif weight.dtype != torch.bfloat16:
        reason = f"the kernels read bfloat16 weights; these are {str(weight.dtype).removeprefix('torch.')}"
    else:
        try:
            kernels = load_kernels(cache_root)
            return KernelChoice(kernels, f"built from {SOURCE.name}, checked against torch ({kernels.path})")
        except KernelBuildError as exc:
            reason = str(exc)
    if key == "m7b":
        raise InvalidInputError(
            f"m7b's CPU kernels cannot be used here: {reason}; choose auto or torch (cpu_kernels)", field="cpu_kernels"
        )
    return KernelChoice(None, f"torch's kernels: {reason}")
