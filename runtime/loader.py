"""From a release folder to a ready model and tokenizer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from m7b.errors import NotFoundError
from m7b.manifests.architecture import load_params
from m7b.release import NoteCallback, Release, ignore_note, release_for, runtime_folder
from m7b.store import Store
from m7b.verify.tokenizer_model import TOKENIZER_NAME

from .args import ModelArgs
from .device import default_dtype, resolve_device, resolve_dtype
from .fused import fuse_projections
from .model import Transformer
from .moe import stack_all_experts
from .size_plan import SizePlan, plan_size
from .tokenizer import Tokenizer
from .weights import check_shapes, find_weights, load_state_dict

if TYPE_CHECKING:
    from .quant_cache import QuantizedSet


@dataclass
class Runtime:
    model: Transformer
    tokenizer: Tokenizer
    args: ModelArgs
    device: torch.device
    dtype: torch.dtype
    weights_path: Path
    release: Release | None = None  # what `load_release` resolved (None from `load_runtime` on a bare folder)
    quantized: QuantizedSet | None = None  # the quantized linears (`--weights`), None: the release's own precision

    @property
    def folder(self) -> Path:
        """The folder whose weights run (a store release's converted native folder when it has one)."""
        return self.weights_path.parent


def weights_dtype(state: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype holding most of the checkpoint's bytes (every tensor of a Mistral release shares one)."""
    totals: dict[torch.dtype, int] = {}
    for tensor in state.values():
        totals[tensor.dtype] = totals.get(tensor.dtype, 0) + tensor.nbytes
    return max(totals, key=lambda d: totals[d])


def build_model(
    args: ModelArgs, state: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype
) -> Transformer:
    """A model holding `state` (already checked) on `device` in `dtype`, without a second copy on the host.

    Tensors already in `dtype` on the CPU are used as they are (memory-mapped pages of the file, no private copy);
    tensors bound for a GPU go one at a time from the mapped file to the device (no host copy). Only a CPU dtype
    other than the checkpoint's (e.g. float32) makes a private converted copy of every weight.
    """
    with torch.device("meta"):
        model = Transformer(args)
    placed = {key: tensor.to(device=device, dtype=dtype) for key, tensor in state.items()}
    model.load_state_dict(placed, strict=True, assign=True)
    del placed
    model.requires_grad_(False)
    if device.type == "cuda":
        fuse_projections(model)
        stack_all_experts(list(model.layers))  # the compiled step gathers the chosen experts from stacked weights
    return model.eval()


def load_runtime(
    release_dir: Path, device: torch.device, dtype: torch.dtype | None = None, args_override: ModelArgs | None = None
) -> Runtime:
    """Read params.json, the weights and tokenizer.model from `release_dir`.

    `dtype` None: `default_dtype` for the device and the checkpoint (on the CPU, the checkpoint's own).

    `args_override` replaces params.json's values after the shape check (the smoke battery uses it to test the
    rolling cache with a smaller window).
    """
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise NotFoundError(
            f"{release_dir} is not a folder: point at a release folder (params.json, {TOKENIZER_NAME} and the weights)"
        )
    arch = load_params(release_dir / "params.json")
    tokenizer = Tokenizer(release_dir / TOKENIZER_NAME)
    state, weights_path = load_state_dict(release_dir)
    check_shapes(arch, state, weights_path)
    args = args_override or ModelArgs.from_architecture(arch)
    dtype = dtype or default_dtype(device, weights_dtype(state))
    model = build_model(args, state, device, dtype)
    return Runtime(model, tokenizer, args, device, dtype, weights_path)


def load_release(
    target: str | Release,
    *,
    store: Store | None = None,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = None,
    window: int | None = None,
    weights: str | None = None,
    on_note: NoteCallback = ignore_note,
    on_size: Callable[[SizePlan], None] | None = None,
) -> Runtime:
    """What a user typed (a release name, a folder, a magnet, a .torrent or a manifest .toml; or a resolved
    Release) loaded as `m7b run` and `m7b smoke` load it: a ready model and tokenizer.

    `device`: auto (CUDA when present, else the CPU), cpu, cuda or cuda:N; `dtype`: float32 or bfloat16, None for
    `default_dtype`. The folder that runs is `m7b.release.runtime_folder`'s: a store release's converted native
    folder when there is one, else the release's own. `window` runs the model with a smaller attention window than
    params.json's (the smoke battery's checks at a small W). `weights`: None for the release's own precision, or
    a quantization scheme (int8, int4: `quantize.py`), its weights made once from the release's and kept in the
    store (`quant_cache.py`). `store` defaults to `Store.from_env()` (M7B_HOME).
    `on_size` sees, before any weight is read, the weights' size against the machine's memory and the decode speed
    their active bytes allow (`size_plan.plan_size`); loading goes on whatever it says.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    dt = dtype if isinstance(dtype, torch.dtype) or dtype is None else resolve_dtype(dtype, dev)
    store = store or Store.from_env()
    release = release_for(target, store, on_note)
    folder = runtime_folder(release, store)
    if on_size is not None:
        on_size(plan_size(load_params(folder / "params.json"), find_weights(folder), dev, dt))
    override = None
    if window is not None:
        override = ModelArgs.from_params_file(folder / "params.json").with_window(window)
    if weights is None:
        runtime = load_runtime(folder, dev, dt, args_override=override)
        runtime.release = release
        return runtime
    from .quantize import check_scheme

    scheme = check_scheme(weights)
    if load_params(folder / "params.json").moe is not None:
        from m7b.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"--weights {scheme}: weight-only quantization covers dense releases; {release.name} is a mixture of "
            "experts — run it without --weights (its own precision)"
        )
    # built on the CPU (the checkpoint's pages mapped, no copy), quantized there, then moved
    cpu_dtype = dt if dt is not None or dev.type == "cpu" else torch.bfloat16
    runtime = load_runtime(folder, torch.device("cpu"), cpu_dtype, override)
    runtime.release = release
    return quantize_runtime(runtime, scheme, store, release.name, dev, on_note)


def quantize_runtime(
    runtime: Runtime, scheme: str, store: Store, name: str, device: torch.device, on_note: NoteCallback = ignore_note
) -> Runtime:
    """`runtime` (on the CPU) with its linears in `scheme` from the store's cache (made there once), then moved to
    `device`."""
    from m7b.owned import refuse_links_below

    from .quant_cache import quantized_weights
    from .quantized_linear import apply_quantized, quantized_linears

    root = refuse_links_below(store.home, store.quant_cache_dir)  # made on first use, never through a link
    found = quantized_weights(runtime.model, scheme, runtime.weights_path, name, store, root)
    if found.note:
        on_note(found.note)
    apply_quantized(runtime.model, found.weights)
    if device.type != "cpu":
        runtime.model.to(device)
    for module in quantized_linears(runtime.model):
        module.prepare_for(runtime.dtype)
    runtime.device, runtime.quantized = device, found
    return runtime
