"""Synthetic releases laid out exactly like Mistral's torrents: the same four files, the same key names.

The checkpoint is `consolidated.00.pth` (a torch zip checkpoint, as Mistral 7B and Mixtral 8x7B ship) or
`consolidated.safetensors` (as Mixtral 8x22B and later releases ship) of bf16 tensors whose shapes follow from the
preset's params.json (dense, or a mixture of experts with mistral-inference's keys); `tokenizer.model` is the real
one (from the mistral-common wheel); `RELEASE` says what the folder is. Files are byte-identical for a given
preset, format and seed, and tensors are generated one at a time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from m7b.atomic import atomic_dir
from m7b.dtypes import BY_NAME, dtype_name
from m7b.errors import InvalidInputError, NotFoundError
from m7b.manifests.architecture import Architecture, MixtureOfExperts
from m7b.progress import ProgressCallback, ProgressEvent, ignore_progress
from m7b.torchzip import TensorSpec, write_checkpoint

# The release's tokenizer.model (DESIGN.md): 493,443 bytes, this sha256. mistral-common ships it.
TOKENIZER_SHA256 = "dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
TOKENIZER_RESOURCE = "tokenizer.model.v1"
RELEASE_FILES = ("RELEASE", "consolidated.00.pth", "params.json", "tokenizer.model")
# The checkpoint a synthetic release ships, by format: Mistral 7B's and Mixtral 8x7B's, or Mixtral 8x22B's.
CHECKPOINT_FILES = {"pth": "consolidated.00.pth", "safetensors": "consolidated.safetensors"}


def _arch(
    dim: int,
    n_layers: int,
    n_heads: int,
    n_kv_heads: int,
    hidden_dim: int,
    window: int | None,
    head_dim: int | None = None,
    moe: MixtureOfExperts | None = None,
) -> Architecture:
    return Architecture(
        moe=moe,
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
    # Mixtral-shaped (a mixture of experts, full attention, mistral-inference's keys): unit tests, 8.6 MB
    "mixtral-tiny": _arch(
        dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, window=None, moe=MixtureOfExperts(4, 2)
    ),
    # integration tests and the CPU MoE benchmark: 8 experts, 2 per token, 0.22 GB (active: 0.11 GB a token)
    "mixtral-small": _arch(
        dim=512, n_layers=4, n_heads=8, n_kv_heads=2, hidden_dim=1536, window=None, moe=MixtureOfExperts(8, 2)
    ),
    # Mixtral 8x7B's params.json (93 GB): the GPU benchmark builds it in device memory, never on disk
    "mixtral-8x7b": _arch(
        dim=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        hidden_dim=14336,
        window=None,
        head_dim=128,
        moe=MixtureOfExperts(8, 2),
    ),
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
    elif spec.key.endswith("feed_forward.gate.weight"):
        values *= 4.0 / math.sqrt(spec.shape[1])  # router logits spread as a trained gate's, rarely near a tie
    else:
        values *= 1.0 / math.sqrt(spec.shape[1])
    return values.to(spec.dtype)


def release_text(preset: str, seed: int, arch: Architecture, checkpoint: str = CHECKPOINT_FILES["pth"]) -> str:
    moe = f"mixture of experts: {arch.moe.describe()}\n" if arch.moe else ""
    return (
        "SYNTHETIC RELEASE made by m7b for testing; these are random weights, not a trained model.\n"
        f"preset: {preset}\nseed: {seed}\nparameters: {arch.parameter_count()}\n{moe}"
        f"layout: four files as Mistral's torrents ship them (RELEASE, {checkpoint}, params.json, tokenizer.model)\n"
        "tokenizer.model: the real Mistral 7B v0.1 tokenizer\n"
        "license: Apache-2.0\n"
    )


def write_safetensors_checkpoint(
    path: Path,
    specs: list[TensorSpec],
    make: Callable[[TensorSpec], torch.Tensor],
    progress: ProgressCallback = ignore_progress,
) -> None:
    """A safetensors file of `specs` in order (header padded to 8 bytes, tensors back to back), each made and
    written one at a time, as Mistral's `consolidated.safetensors` holds a release's tensors."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for s in specs:
        header[s.key] = {
            "dtype": BY_NAME[dtype_name(s.dtype)].safetensors,
            "shape": list(s.shape),
            "data_offsets": [offset, offset + s.nbytes],
        }
        offset += s.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    total, done = offset, 0
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for s in specs:
            tensor = make(s).contiguous()
            fh.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
            done += s.nbytes
            progress(ProgressEvent("writing", done, total, item=s.key))


def synthesize(
    out: Path,
    preset: str = "tiny",
    seed: int = 0,
    *,
    tokenizer: Path | None = None,
    checkpoint_format: str = "pth",
    progress: ProgressCallback = ignore_progress,
) -> SynthRelease:
    """Write a synthetic release folder at `out` (which must not exist, or be empty); its checkpoint is
    `consolidated.00.pth` (`checkpoint_format` "pth") or `consolidated.safetensors` ("safetensors")."""
    if preset not in PRESETS:
        raise InvalidInputError(f"unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if checkpoint_format not in CHECKPOINT_FILES:
        raise InvalidInputError(
            f"unknown checkpoint format {checkpoint_format!r}; expected one of {', '.join(CHECKPOINT_FILES)}",
            field="checkpoint_format",
        )
    checkpoint = CHECKPOINT_FILES[checkpoint_format]
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
        (tmp / "RELEASE").write_text(release_text(preset, seed, arch, checkpoint), encoding="utf-8")
        if checkpoint_format == "safetensors":
            write_safetensors_checkpoint(tmp / checkpoint, specs, lambda s: synth_tensor(s, seed), progress)
        else:
            write_checkpoint(
                tmp / checkpoint,
                specs,
                lambda s: synth_tensor(s, seed),
                archive="consolidated",
                progress=progress,
            )
    return SynthRelease(Path(out), preset, seed, arch, sum(s.nbytes for s in specs))
