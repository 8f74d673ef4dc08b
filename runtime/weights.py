"""Reading a release's weights: the native safetensors (memory-mapped) or the original `consolidated.00.pth`
through verify's safe loader (its pickle is checked against an allowlist before anything is unpickled).

The one place in the runtime that opens weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from m7b.errors import InvalidInputError, MismatchError, NotFoundError
from m7b.runtime.args import ModelArgs

SAFETENSORS_NAME = "consolidated.safetensors"
CHECKPOINT_NAME = "consolidated.00.pth"


def find_weights(release_dir: Path) -> Path:
    """The native safetensors when present, else the original checkpoint."""
    for name in (SAFETENSORS_NAME, CHECKPOINT_NAME):
        path = Path(release_dir) / name
        if path.is_file():
            return path
    raise NotFoundError(f"{release_dir} holds neither {SAFETENSORS_NAME} nor {CHECKPOINT_NAME}: point at a release "
                        "folder (or its converted native folder)")


def load_state_dict(release_dir: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of a release (memory-mapped, on the CPU) and the file they came from."""
    path = find_weights(release_dir)
    if path.name == SAFETENSORS_NAME:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {key: f.get_tensor(key) for key in f.keys()}, path  # noqa: SIM118 (safe_open has no iter)
        except SafetensorError as exc:
            raise InvalidInputError(f"{path} is not a readable safetensors file ({exc}); reconvert the release "
                                    "with `m7b convert --to native`") from exc
    from m7b.verify.checkpoint import load_checkpoint

    return load_checkpoint(path), path  # memory-mapped; UnsafeError / MismatchError for a refused file


def check_shapes(args: ModelArgs, state: dict[str, torch.Tensor], source: Path) -> None:
    """Every key params.json implies is present with its shape, and nothing else is."""
    from m7b.manifests.architecture import Architecture

    arch = Architecture(dim=args.dim, n_layers=args.n_layers, head_dim=args.head_dim, hidden_dim=args.hidden_dim,
                        n_heads=args.n_heads, n_kv_heads=args.n_kv_heads, norm_eps=args.norm_eps,
                        sliding_window=args.sliding_window, vocab_size=args.vocab_size)
    expected = arch.tensor_shapes()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [(k, expected[k], tuple(state[k].shape)) for k in expected if k in state
             and tuple(state[k].shape) != expected[k]]
    if not (missing or extra or wrong):
        return
    parts = []
    if wrong:
        k, want, got = wrong[0]
        parts.append(f"{len(wrong)} tensor(s) with other shapes than params.json implies, e.g. {k}: params.json "
                     f"implies {list(want)}, {source.name} holds {list(got)}")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    raise MismatchError(f"params.json and {source} disagree: {'; '.join(parts)}. The params.json does not describe "
                        "these weights: restore the release's own params.json (or re-fetch and verify the release)")
