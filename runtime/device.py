"""Choosing the device and dtype from the user's words."""

from __future__ import annotations

import re

import torch

from m7b.errors import InvalidInputError

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda` or `cuda:N`."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"device {name}: no CUDA device is available to this torch "
                f"({torch.__version__}); use device cpu, or auto to pick what is there",
                field="device",
            )
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(
                f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0",
                field="device",
            )
        return device
    raise InvalidInputError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype | None:
    """`float32` or `bfloat16`; none given returns None: the loader picks `default_dtype` once it sees the weights."""
    if name is None:
        return None
    key = name.strip().lower()
    if key not in DTYPES:
        raise InvalidInputError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


def default_dtype(device: torch.device, weights_dtype: torch.dtype) -> torch.dtype:
    """bfloat16 on CUDA; on the CPU the checkpoint's own dtype (bfloat16 for Mistral 7B v0.1).

    On the CPU a wider dtype would mean a converted copy of every weight in private memory (29 GB in float32 for
    the 14.5 GB release); in the checkpoint's dtype the model computes straight from the memory-mapped file.
    """
    if device.type == "cuda":
        return torch.bfloat16
    return weights_dtype
