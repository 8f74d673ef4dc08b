"""The one safe way to open a `.pth` checkpoint as tensors: inspected first, every tensor proven to own its bytes,
then `torch.load(weights_only=True, mmap=True)` on a torch recent enough to trust."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from m7b.errors import MismatchError, UnsafeError

from .checkpoint_index import index_checkpoint

if TYPE_CHECKING:
    import torch

MIN_TORCH = "2.10"


def load_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Inspect, then load a checkpoint's tensors memory-mapped (`weights_only=True, mmap=True`).

    The one safe way to open a `.pth` in m7b: raises UnsafeError for a pickle that imports anything beyond a
    plain tensor state dict, MismatchError for a damaged file or a tensor that does not own exactly its bytes
    (`checkpoint_index.require_owned`); returns {key: tensor} backed by the file.
    """
    import torch

    if torch.__version__ < MIN_TORCH:  # TorchVersion compares as a version, not as text
        raise UnsafeError(
            f"torch {torch.__version__} is installed; weights_only loading is only trusted from torch "
            f"{MIN_TORCH} (CVE-2025-32434, CVE-2026-24747): upgrade torch before loading checkpoints"
        )
    index = index_checkpoint(path)  # inspection, then each tensor proven to own exactly its bytes of the file
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        raise MismatchError(
            f"{path}: torch.load refused the checkpoint after inspection ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); the file is damaged or not a "
            "state dict — re-download it"
        ) from exc
    if not isinstance(state, Mapping):
        raise MismatchError(f"{path}: expected a dict of tensors, found {type(state).__name__}")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise MismatchError(f"{path}: entry {bad[0]!r} is not a tensor; expected a flat dict of named tensors")
    differs = [k for k, t in state.items() if k not in index or tuple(t.shape) != index[k].shape]
    if differs or len(state) != len(index):
        raise MismatchError(
            f"{path}: torch.load gives tensor {(differs or list(index))[0]!r} other than the pickle describes; the "
            "file is damaged or crafted — re-download it"
        )
    return dict(state)
