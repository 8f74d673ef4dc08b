"""Synthetic releases laid out exactly like Mistral 7B v0.1's: the same four files, the same key names.

`consolidated.00.pth` is a torch zip checkpoint of bf16 tensors whose shapes follow from the preset's
params.json; `tokenizer.model` is the real one (from the mistral-common wheel); `RELEASE` says what the
folder is. Files are byte-identical for a given preset and seed, and tensors are generated one at a time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from m7b.atomic import atomic_dir
from m7b.errors import InvalidInputError, NotFoundError
from m7b.manifests.architecture import Architecture
from m7b.progress import ProgressCallback, ignore_progress
from m7b.torchzip import TensorSpec, write_checkpoint

# The release's tokenizer.model (DESIGN.md): 493,443 bytes, this sha256. mistral-common ships it.
TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
TOKENIZER_RESOURCE = "tokenizer.model.v1"
RELEASE_FILES = ("RELEASE", "consolidated.00.pth", "params.json", "tokenizer.model")


def _arch(
    dim: int, n_layers: int, n_heads: int, n_kv_heads: int, hidden_dim: int, window: int, head_dim: int | None = None
) -> Architecture:
    return Architecture(
        dim=dim,
        n_layers=n_layers,
        head_dim=head_dim or dim // n_heads,
        hidden_dim=hidden_dim,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        norm_eps=1e-5,
        sliding_window=window,
        vocab_size=32000,
    )


PRESETS: dict[str, Architecture] = {
    # unit tests: 8.6 MB, a window small enough that short prompts cross it
    "tiny": _arch(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, window=16),
    # integration tests: 38 MB
    "small": _arch(dim=256, n_layers=4, n_heads=8, n_kv_heads=2, hidden_dim=768, window=64),
    # the CPU decode benchmark's model (runtime issue): 0.2 GB
    "bench-cpu": _arch(dim=512, n_layers=8, n_heads=8, n_kv_heads=2, hidden_dim=1536, window=256),
    # fetch/verify/convert benchmarks: 2.16 GB (2.008 GiB) of bf16 tensors
    "bench-2g": _arch(dim=2048, n_layers=21, n_heads=16, n_kv_heads=4, hidden_dim=5632, window=4096),
    # the real release's shapes (params.json of Mistral 7B v0.1): 14.5 GB
    "mistral-7b": Architecture(
        dim=4096,
        n_layers=32,
        head_dim=128,
        hidden_dim=14336,
        n_heads=32,
        n_kv_heads=8,
        norm_eps=1e-5,
        sliding_window=4096,
        vocab_size=32000,
    ),
}


@dataclass(frozen=True)
class SynthRelease:
    path: Path
    preset: str
    seed: int
    architecture: Architecture
    checkpoint_bytes: int


def bundled_tokenizer() -> Path:
    """The real tokenizer.model, as shipped inside the mistral-common wheel (found without importing it)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or spec.origin is None:
        raise NotFoundError(
            "the real tokenizer.model comes from the mistral-common package, which is not "
            "installed: run `pip install mistral-common` or pass a tokenizer file (tokenizer)",
            field="tokenizer",
        )
    path = Path(spec.origin).parent / "data" / TOKENIZER_RESOURCE
    if not path.is_file():
        raise NotFoundError(
            f"expected {path} inside the mistral-common package, found nothing: "
            "reinstall mistral-common or pass a tokenizer file (tokenizer)",
            field="tokenizer",
        )
    return path


def tensor_seed(seed: int, key: str) -> int:
    """Each tensor's generator seed depends only on (seed, key), never on generation order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def synth_tensor(spec: TensorSpec, seed: int) -> torch.Tensor:
    """Deterministic values with realistic scales: norms near 1, weights ~ N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(tensor_seed(seed, spec.key))
    values = torch.randn(spec.shape, generator=gen, dtype=torch.float32)
    if len(spec.shape) == 1:
        values = 1.0 + 0.1 * values
    elif spec.key == "tok_embeddings.weight":
        pass
    else:
        values *= 1.0 / math.sqrt(spec.shape[1])
    return values.to(spec.dtype)


def release_text(preset: str, seed: int, arch: Architecture) -> str:
    return (
        "SYNTHETIC RELEASE made by m7b for testing; these are random weights, not a trained model.\n"
        f"preset: {preset}\nseed: {seed}\nparameters: {arch.parameter_count()}\n"
        "layout: the four files of Mistral 7B v0.1 (RELEASE, consolidated.00.pth, params.json, tokenizer.model)\n"
        "tokenizer.model: the real Mistral 7B v0.1 tokenizer\n"
        "license: Apache-2.0\n"
    )


def synthesize(
    out: Path,
    preset: str = "tiny",
    seed: int = 0,
    *,
    tokenizer: Path | None = None,
    progress: ProgressCallback = ignore_progress,
) -> SynthRelease:
    """Write a synthetic release folder at `out` (which must not exist, or be empty)."""
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    arch = PRESETS[preset]
    source = Path(tokenizer) if tokenizer is not None else bundled_tokenizer()
    if not source.is_file():
        raise NotFoundError(f"tokenizer file {source} not found")
    if tokenizer is None:
        found = hashlib.sha256(source.read_bytes()).hexdigest()
        if found != TOKENIZER_SHA256:
            raise InvalidInputError(
                f"{source} has sha256 {found}, expected the release's {TOKENIZER_SHA256}; "
                "pass the real tokenizer.model (tokenizer)",
                field="tokenizer",
            )
    specs = [TensorSpec(k, s) for k, s in arch.tensor_shapes().items()]
    with atomic_dir(Path(out)) as tmp:
        (tmp / "params.json").write_text(arch.to_json(), encoding="utf-8")
        shutil.copyfile(source, tmp / "tokenizer.model")
        (tmp / "RELEASE").write_text(release_text(preset, seed, arch), encoding="utf-8")
        write_checkpoint(
            tmp / "consolidated.00.pth",
            specs,
            lambda s: synth_tensor(s, seed),
            archive="consolidated",
            progress=progress,
        )
    return SynthRelease(Path(out), preset, seed, arch, sum(s.nbytes for s in specs))
