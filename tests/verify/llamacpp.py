"""llama.cpp as the GGUF tests' reference: the build scripts/build-llamacpp caches (converter, llama-quantize, the
library through llama-cpp-python's bindings). Absent locally, its tests skip; under CI (`CI` or
`M7B_REQUIRE_LLAMACPP` set) an absent build fails them: CI must compare with the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

VERSION = "0.3.36"
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "build-llamacpp"


def tools_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "m7b-tools" / f"llama.cpp-{VERSION}"
    return Path(os.environ.get("M7B_LLAMACPP_DIR") or default)


def require_tools() -> Path:
    """The cached llama.cpp build, or a skip (a failure under CI) saying how to get it."""
    root = tools_dir()
    if (root / "VERSION").is_file() and (root / "bin" / "llama-quantize").is_file():
        return root
    message = f"llama.cpp {VERSION} is not built in {root}: run scripts/build-llamacpp"
    if os.environ.get("CI") or os.environ.get("M7B_REQUIRE_LLAMACPP"):
        pytest.fail(message)
    pytest.skip(message)


def convert_hf(tools: Path, hf_folder: Path, out: Path, outtype: str) -> Path:
    """llama.cpp's own converter on a Hugging Face folder."""
    proc = subprocess.run(
        [
            sys.executable,
            str(tools / "convert_hf_to_gguf.py"),
            str(hf_folder),
            "--outtype",
            outtype,
            "--outfile",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def quantize(tools: Path, src: Path, out: Path, file_type: str) -> Path:
    proc = subprocess.run(
        [str(tools / "bin" / "llama-quantize"), str(src), str(out), file_type, "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def bindings(tools: Path):
    """llama-cpp-python's ctypes bindings (same pin) on the cached library."""
    os.environ["LLAMA_CPP_LIB_PATH"] = str(tools / "lib")
    if str(tools / "python") not in sys.path:
        sys.path.insert(0, str(tools / "python"))
    import llama_cpp
    import llama_cpp.llama_cpp as low

    if not getattr(low, "_m7b_no_repack", False):
        defaults = low.llama_model_default_params

        def no_repack():  # type: ignore[no-untyped-def]
            params = defaults()
            params.use_extra_bufts = False  # the CPU repack of q8_0/q4_0 crashes on AMX hosts (llama-bench too)
            return params

        low.llama_model_default_params = no_repack
        low._m7b_no_repack = True
    return llama_cpp


def kv(path: Path) -> dict[str, object]:
    """A GGUF file's metadata (its own GGUF.* fields aside): key -> (value types, value)."""
    import gguf

    reader = gguf.GGUFReader(path)
    return {k: (tuple(f.types), f.contents()) for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """A GGUF file's tensors: name -> (type, shape, bytes)."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(path)
    return {
        t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape), np.asarray(t.data).tobytes())
        for t in reader.tensors
    }


def llama(tools: Path, path: Path, n_ctx: int):
    """llama.cpp's model on a GGUF file, every position's logits kept, 2 threads."""
    llama_cpp = bindings(tools)
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=2, logits_all=True, verbose=False, seed=0)
