"""The decode step a run uses, prepared before the first token: eager, compiled, or a captured CUDA graph.

`prepare_decode` allocates the caches at a static size, builds the step and warms it up (compiling or capturing
happens here, timed as `prepare_s`, never inside the decode figures). On CUDA the default is the compiled step
(torch.compile, "reduce-overhead": fused kernels replayed as CUDA graphs); on the CPU it is the eager step, whose
single-row work goes to m7b's bf16 CPU kernels when they apply (`row_kernels.row_kernel_step` over
`cpu_kernels.BF16RowKernels`). The captured CUDA graph (`graph`) is GPU-only (`GPU_ONLY_MODES`): refused elsewhere;
its static-buffer bookkeeping (`StaticStep`) and checks (`check_capturable`) run and are tested on the CPU.

Compiled artifacts persist under `<M7B_HOME>/cache/compile/<key>/` (inductor's FX-graph, autotuning and Triton
caches), one folder per (model shape, dtype, device, torch version, mode): a run compiles once, later runs load.
Cache shapes are static per run size bucket (`static_seq_len`), so later prompts of other lengths reuse the graph.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from m7b.atomic import write_text
from m7b.errors import InvalidInputError, StorageError
from m7b.owned import own_dir

from .cpu_kernels_build import KERNEL_CHOICES, TORCH_NAME, KernelChoice, choose_kernels
from .generate import DecodeFn, decode_one_token
from .model import Transformer
from .quantized_linear import quantized_linears
from .row_kernels import row_kernel_step

if TYPE_CHECKING:
    from .cpu_kernels_quant import QuantKernelChoice

DECODE_MODES = ("auto", "eager", "compile", "graph")
GPU_ONLY_MODES = ("graph",)  # a captured CUDA graph: refused on the CPU, named GPU-only in smoke and bench
READY_NAME = "READY.json"  # written once a compiled step has run: the folder holds a complete compile
MIN_STATIC_LEN = 512  # the smallest cache bucket (a short answer to a short prompt)


@dataclass
class PreparedDecode:
    mode: str  # "eager", "compile" or "graph"
    fn: DecodeFn
    max_seq_len: int  # the caches' size: pass it to `generate(max_seq_len=...)`
    prepare_s: float  # allocating caches, compiling or loading compiled code, capturing, warming up
    cache_dir: Path | None  # where compiled artifacts live (compile only)
    # "hit" (a complete compile was found and nothing compiled anew), "partial" (found, but some graph compiled
    # anew), "miss" (compiled now and saved) or "none"
    cache: str
    fx_graph_hits: int = 0  # inductor graphs loaded from the cache / compiled during preparation
    fx_graph_misses: int = 0
    cpu_kernels: str = TORCH_NAME  # the kernels of the eager CPU step's single-row work: m7b's or torch's
    cpu_kernels_note: str = ""  # why those kernels

    def record(self) -> dict[str, object]:
        return {
            "decode_mode": self.mode,
            "cpu_kernels": self.cpu_kernels,
            "cpu_kernels_note": self.cpu_kernels_note,
            "prepare_s": round(self.prepare_s, 3),
            "static_seq_len": self.max_seq_len,
            "compile_cache": self.cache,
            "compile_cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "fx_graph_cache_hits": self.fx_graph_hits,
            "fx_graph_cache_misses": self.fx_graph_misses,
        }


def resolve_mode(name: str, device: torch.device) -> str:
    """`auto`: the compiled step on CUDA, the eager one on the CPU (where compiling gains nothing measurable)."""
    key = name.strip().lower()
    if key not in DECODE_MODES:
        raise InvalidInputError(f"unknown decode mode {name!r}: expected one of {', '.join(DECODE_MODES)}")
    if key == "auto":
        return "compile" if device.type == "cuda" else "eager"
    if key == "graph" and device.type != "cuda":
        raise InvalidInputError(f"a captured CUDA graph needs a CUDA device, found {device}; use compile or eager")
    return key


def static_seq_len(needed: int, window: int) -> int:
    """The cache size for a run needing `needed` positions: a power of two, at least min(512, W).

    Fixed buckets keep the compiled step's shapes the same across prompts, so one compile serves many runs;
    the cache holds min(W, bucket) slots, so a short run does not read a W-slot cache every token.
    """
    bucket = 1 << max(0, needed - 1).bit_length()
    return max(bucket, min(MIN_STATIC_LEN, window), needed)


def compile_key(model: Transformer, device: torch.device, mode: str) -> dict[str, object]:
    """What a compiled step depends on: the model's shape, dtype, device kind, torch version, mode."""
    weight = model.output.weight
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    quantized = quantized_linears(model)
    key: dict[str, object] = {"weights": quantized[0].scheme} if quantized else {}  # absent: the release's own
    return key | {
        "args": asdict(model.args),
        "dtype": str(weight.dtype).removeprefix("torch."),
        "device": name,
        "capability": list(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "mode": mode,
        "cache_slots": model.capacity,
        "positions": model.max_seq_len,
    }


def compile_cache_dir(root: Path, key: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / digest


def _fx_counts() -> tuple[int, int]:
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return int(inductor["fxgraph_cache_hit"]), int(inductor["fxgraph_cache_miss"])


def _use_cache_dir(folder: Path) -> None:
    """Point inductor's caches (FX graphs, autotuning, Triton kernels) at `folder` for this process; a folder the
    disk refuses is a StorageError."""
    try:
        own_dir(folder, folder.parent)  # a symlink there: LinkInTheWayError, exit 6
    except OSError as exc:
        raise StorageError(
            f"could not create the compile cache folder {folder}: {exc.strerror or exc}; use a cache folder you can "
            "write to, or the eager decode step"
        ) from exc
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    os.environ["TRITON_CACHE_DIR"] = str(folder / "triton")
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True


def compiled_step(device: torch.device) -> DecodeFn:
    """`decode_one_token` through torch.compile: on CUDA "reduce-overhead" (CUDA graphs) with coordinate-descent
    tuning of the generated kernels (gpt-fast's settings); on the CPU the default mode.

    Shapes are static by design (`static_seq_len` buckets): a graph is never made dynamic after a second shape,
    so what one run compiles is exactly what the next run looks up.
    """
    import torch._dynamo.config as dynamo_config

    dynamo_config.automatic_dynamic_shapes = False
    if device.type == "cuda":
        import torch._inductor.config as inductor_config

        inductor_config.coordinate_descent_tuning = True
        inductor_config.triton.unique_kernel_names = True
        return torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)
    return torch.compile(decode_one_token, fullgraph=True)


@dataclass
class StaticStep:
    """A decode step over static buffers, as a captured CUDA graph runs: each call copies the token and position
    into `token` and `pos`, replays the captured work (`replay`), and returns `out`, the same tensor every call,
    overwritten by the next one (read it first)."""

    token: torch.Tensor  # (1, 1) token ids
    pos: torch.Tensor  # (1,) positions
    out: torch.Tensor  # the logits the replay leaves, (1, V)
    replay: Callable[[], object]

    def __call__(self, _model: Transformer, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if token.shape != self.token.shape or pos.shape != self.pos.shape:
            raise InvalidInputError(
                f"the captured decode step takes a token of shape {tuple(self.token.shape)} and a position of shape "
                f"{tuple(self.pos.shape)}, found {tuple(token.shape)} and {tuple(pos.shape)}: decode one token of "
                "batch 1 per call, or use the compiled or eager step"
            )
        self.token.copy_(token)
        self.pos.copy_(pos)
        self.replay()
        return self.out


def check_capturable(model: Transformer, device: torch.device) -> None:
    """What a CUDA-graph capture needs before it starts: a CUDA device, and the model's caches (the graph's static
    shapes) already set up."""
    if device.type != "cuda":
        raise InvalidInputError(
            f"CUDA graphs need a CUDA device, found {device}: the graph decode step is GPU-only; use compile or eager"
        )
    if not model.capacity:
        raise InvalidInputError("set up the caches (model.setup_caches) before capturing the decode step")


def static_inputs(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The token (1, 1) and position (1,) buffers a captured step reads."""
    return torch.zeros((1, 1), dtype=torch.long, device=device), torch.zeros((1,), dtype=torch.long, device=device)


def cuda_graph_decode(model: Transformer, device: torch.device) -> StaticStep:
    """`decode_one_token` captured once as a CUDA graph over static token and position tensors (GPU-only)."""
    check_capturable(model, device)
    static_tok, static_pos = static_inputs(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm up kernels and the allocator outside the capture
            decode_one_token(model, static_tok, static_pos)
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = decode_one_token(model, static_tok, static_pos)
    model.reset_caches()  # the warm-up wrote position 0
    return StaticStep(static_tok, static_pos, static_out, graph.replay)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _warm_up(model: Transformer, fn: DecodeFn, device: torch.device, steps: int = 3) -> None:
    """Run the step a few times (compile, record the CUDA graph, replay), then forget what it wrote."""
    token = torch.ones((1, 1), dtype=torch.long, device=device)
    for i in range(steps):
        fn(model, token, torch.tensor([i], dtype=torch.long, device=device))
    _sync(device)
    model.reset_caches()


def prepare_decode(
    model: Transformer,
    mode: str,
    needed: int,
    cache_root: Path | None = None,
    cpu_kernels: str = "auto",
    kernel_root: Path | None = None,
) -> PreparedDecode:
    """Caches for `needed` positions and a warmed-up decode step in `mode` (already resolved: eager, compile,
    graph). `cache_root` holds compiled artifacts (compile only; None: torch's default location). `cpu_kernels`
    (auto, m7b, torch) picks the eager step's single-row kernels, built under `kernel_root`; the compiled and
    graph steps use the kernels inductor and torch generate, and refuse `m7b`."""
    device = model.output.weight.device
    start = time.perf_counter()
    if mode == "eager":
        model.setup_caches(1, needed)
        quantized = quantized_linears(model)
        if quantized:  # a model with quantized linears: m7b's quantized kernels (quant_decode.py)
            from .cpu_kernels_quant import choose_quant_kernels
            from .quant_decode import quant_kernel_step

            quant_choice = choose_quant_kernels(cpu_kernels, quantized[0].weight_q, kernel_root)
            for module in quantized:  # a short prefill's int4 products on them too
                module.row_kernels = quant_choice.kernels
            fn = quant_kernel_step(quant_choice.kernels) if quant_choice.kernels else decode_one_token
            choice: KernelChoice | QuantKernelChoice = quant_choice
        else:
            choice = choose_kernels(cpu_kernels, model.output.weight, kernel_root)
            fn = row_kernel_step(choice.kernels) if choice.kernels else decode_one_token
        return PreparedDecode(
            "eager",
            fn,
            needed,
            time.perf_counter() - start,
            None,
            "none",
            cpu_kernels=choice.name,
            cpu_kernels_note=choice.note,
        )
    if cpu_kernels.strip().lower() not in KERNEL_CHOICES:
        choose_kernels(cpu_kernels, model.output.weight, kernel_root)  # raises, naming the choices
    if cpu_kernels.strip().lower() == "m7b":
        raise InvalidInputError(
            f"m7b's CPU kernels serve the eager CPU step, not the {mode} step: use the eager step with them, or "
            "choose auto (cpu_kernels)",
            field="cpu_kernels",
        )
    if mode == "graph" and device.type != "cuda":
        check_capturable(model, device)  # refuses before any cache is allocated
    max_seq_len = static_seq_len(needed, model.window)
    model.setup_caches(1, max_seq_len)
    if mode == "graph":
        fn = cuda_graph_decode(model, device)
        elapsed = time.perf_counter() - start
        return PreparedDecode("graph", fn, max_seq_len, elapsed, None, "none", cpu_kernels_note="torch's kernels")
    if mode != "compile":
        raise InvalidInputError(f"unknown decode mode {mode!r}: expected eager, compile or graph")
    folder = None
    cache = "none"
    if cache_root is not None:
        key = compile_key(model, device, mode)
        folder = compile_cache_dir(cache_root, key)
        cache = "hit" if (folder / READY_NAME).is_file() else "miss"
        _use_cache_dir(folder)
    hits, misses = _fx_counts()
    fn = compiled_step(device)
    _warm_up(model, fn, device)
    new_hits, new_misses = _fx_counts()
    if cache == "hit" and new_misses > misses:  # the folder was complete, yet a graph compiled anew
        cache = "partial"
    if folder is not None and cache == "miss":
        write_text(folder / READY_NAME, json.dumps(compile_key(model, device, mode), indent=1, default=str))
    return PreparedDecode(
        "compile",
        fn,
        max_seq_len,
        time.perf_counter() - start,
        folder,
        cache,
        new_hits - hits,
        new_misses - misses,
        cpu_kernels_note="inductor's kernels",
    )
