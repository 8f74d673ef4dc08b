"""Reading a release's weights: `consolidated.safetensors` (a converted native folder's, or the release's own as
Mixtral 8x22B ships it; its header read strictly by verify first, then memory-mapped) or the original
`consolidated.00.pth` through verify's safe loader (its pickle is checked against an allowlist before anything is
unpickled).

The one place in the runtime that opens weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from m7b.errors import InvalidInputError, MismatchError, NotFoundError
from m7b.manifests.architecture import Architecture

# The element types the runtime computes from (each is copied into the model's dtype); a checkpoint holding any
# other (I16, U16, I32, BOOL: no release's weights) is refused when it is read, before a model is built.
WEIGHT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)

SAFETENSORS_NAME = "consolidated.safetensors"
CHECKPOINT_NAME = "consolidated.00.pth"


def find_weights(release_dir: Path) -> Path:
    """The native safetensors when present, else the original checkpoint."""
    for name in (SAFETENSORS_NAME, CHECKPOINT_NAME):
        path = Path(release_dir) / name
        if path.is_file():
            return path
    raise NotFoundError(
        f"{release_dir} holds neither {SAFETENSORS_NAME} nor {CHECKPOINT_NAME}: point at a release "
        "folder (or its converted native folder)"
    )


def load_state_dict(release_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a release (memory-mapped, on the CPU) and the file they came from; InvalidInputError (exit 4)
    for a tensor whose element type is no weight's (`WEIGHT_DTYPES`)."""
    state, path = _read_state_dict(release_dir)
    for key, tensor in state.items():
        if tensor.dtype not in WEIGHT_DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in WEIGHT_DTYPES)
            raise InvalidInputError(
                f"{path}: tensor {key!r} holds {str(tensor.dtype).removeprefix('torch.')} elements; weights are "
                f"{names}: reconvert the release (`m7b convert`) or re-fetch it and run `m7b verify`"
            )
    return state, path


def _read_state_dict(release_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    path = find_weights(release_dir)
    if path.name == SAFETENSORS_NAME:
        from safetensors import SafetensorError, safe_open

        from m7b.verify.checkpoint_safetensors import index_safetensors

        index_safetensors(path)  # offsets inside the file, no overlap or gap, known dtypes: MismatchError if not
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {key: f.get_tensor(key) for key in f.keys()}, path  # noqa: SIM118 (safe_open has no iter)
        except SafetensorError as exc:
            raise InvalidInputError(
                f"{path} is not a readable safetensors file ({exc}); reconvert the release "
                "to native safetensors (`m7b convert`)"
            ) from exc
    from m7b.verify.checkpoint_load import load_checkpoint

    return load_checkpoint(path), path  # memory-mapped; UnsafeError / MismatchError for a refused file


def check_shapes(arch: Architecture, state: dict[str, torch.Tensor], source: Path) -> None:
    """Every key params.json implies is present with its shape, and nothing else is (verify's tensor check)."""
    from m7b.verify.checkpoint import TensorCheck, check_tensors

    found = check_tensors(state, arch)
    shapes = TensorCheck(
        tensors=found.tensors,
        missing=found.missing,
        extra=found.extra,
        wrong_shape=found.wrong_shape,
        expected_tensors=found.expected_tensors,
        per_layer=found.per_layer,
    )
    if shapes.ok:
        return
    raise MismatchError(
        f"params.json and {source} disagree: {'; '.join(shapes.problems())}. The params.json does "
        "not describe these weights: restore the release's own params.json (or re-fetch the release "
        "and run `m7b verify`)"
    )
