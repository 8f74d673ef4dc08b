"""Storage dtypes: the one table of how a tensor element type is named by torch, by a torch checkpoint's pickle
(its storage class) and by safetensors, and how many bytes it takes. No torch import: the checkpoint index and
the safetensors writer read and write files without it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StorageDtype:
    name: str  # torch's dtype name without "torch.": "bfloat16"
    itemsize: int
    storage: str  # the legacy storage class a torch checkpoint's pickle names: "BFloat16Storage"
    safetensors: str  # the safetensors header's dtype code: "BF16"


DTYPES: tuple[StorageDtype, ...] = (
    StorageDtype("bfloat16", 2, "BFloat16Storage", "BF16"),
    StorageDtype("float16", 2, "HalfStorage", "F16"),
    StorageDtype("float32", 4, "FloatStorage", "F32"),
    StorageDtype("float64", 8, "DoubleStorage", "F64"),
    StorageDtype("uint8", 1, "ByteStorage", "U8"),
    StorageDtype("int8", 1, "CharStorage", "I8"),
    StorageDtype("int16", 2, "ShortStorage", "I16"),
    StorageDtype("int32", 4, "IntStorage", "I32"),
    StorageDtype("int64", 8, "LongStorage", "I64"),
    StorageDtype("bool", 1, "BoolStorage", "BOOL"),
)
BY_NAME: dict[str, StorageDtype] = {d.name: d for d in DTYPES}
# torch 2's UntypedStorage holds bytes; the tensor's own dtype comes from elsewhere in the pickle
BY_STORAGE: dict[str, StorageDtype] = {d.storage: d for d in DTYPES} | {"UntypedStorage": BY_NAME["uint8"]}


def dtype_name(dtype: object) -> str:
    """torch.bfloat16 (or "torch.bfloat16", or "bfloat16") -> "bfloat16"."""
    return str(dtype).removeprefix("torch.")
