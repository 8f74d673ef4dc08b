"""llama.cpp as the GGUF tests' reference: the build scripts/build-llamacpp caches (converter, llama-quantize, the
library through llama-cpp-python's bindings). Absent locally, its tests skip; under CI (`CI` or
`M7B_REQUIRE_LLAMACPP` set) an absent build fails them: CI must compare with the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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


GGUF_TYPES = ("bf16", "f16", "q8_0", "q4_0")


def m7b_outputs(src: Path, base: Path, name: str, info_hash: str) -> dict[str, Path]:
    """`src` through m7b's convert: its hf folder (`hf`, the converter's input) and a GGUF file per type."""
    from m7b.verify.convert import convert_release

    out = {"hf": convert_release(src, base / "hf", "hf").out}
    for t in GGUF_TYPES:
        folder = convert_release(src, base / t, f"gguf-{t}", name=name, info_hash=info_hash).out
        out[t] = folder / f"{name}-{t.upper()}.gguf"
    return out


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


PROOF_KEYS = ("general.name", "general.source.url")  # m7b names the release; the converter names the folder


def assert_converters_file(ours: Path, ref: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every tensor of m7b's file (type, shape, bytes) and every metadata key but the proof equal to those of the
    reference file `ref` llama.cpp's converter wrote; the reference's tensors."""
    mine, theirs = tensors(ours), tensors(ref)
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert mine[name] == theirs[name], name  # type, shape and every byte
    ours_kv, converter = kv(ours), kv(ref)
    for key in set(ours_kv) | set(converter):
        if key not in PROOF_KEYS and not key.startswith("m7b."):
            assert ours_kv.get(key) == converter.get(key), key  # the vocabulary, the hyperparameters, the flags
    return theirs


def assert_quantizers_file(ours: Path, ref: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every block of m7b's quantized file equal to llama-quantize's (`ref`), the metadata (proof included) kept."""
    mine, theirs = tensors(ours), tensors(ref)
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert mine[name] == theirs[name], name
    assert kv(ours) == kv(ref)  # llama-quantize keeps the metadata, proof included
    return theirs


def assert_llama_cpp_logits(
    tools: Path, path: Path, release: Path, seed: int, n_ctx: int
) -> tuple[list[int], list[int], Any]:
    """llama.cpp on the GGUF `path` against m7b's float32 model of `release`: teacher-forced logits within 2% of the
    largest over a 16-token prompt and m7b's 32 greedy tokens, and llama.cpp's argmax m7b's token wherever m7b's top
    two are not a near-tie (at least 16 such positions). Returns (prompt, greedy tokens, clear-positions mask)."""
    import numpy as np
    import torch

    from m7b.runtime.generate import GenerationConfig, generate
    from m7b.runtime.loader import load_runtime

    model = load_runtime(release, torch.device("cpu"), torch.float32).model
    prompt = [1] + torch.randint(3, 32000, (15,), generator=torch.Generator().manual_seed(seed)).tolist()
    greedy = generate(model, prompt, GenerationConfig(max_tokens=32, stop_at_eos=False)).tokens
    seq = prompt + greedy[:-1]
    model.setup_caches(1, len(seq))
    with torch.inference_mode():
        ours = model(torch.tensor([seq]), torch.arange(len(seq)))[0].numpy()
    llm = llama(tools, path, n_ctx)
    llm.eval(seq)
    theirs = np.asarray(llm.scores[: len(seq)])
    scale = np.abs(ours).max(axis=1)
    assert np.all(np.abs(theirs - ours).max(axis=1) <= 0.02 * scale)
    top2 = np.sort(ours, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.04 * scale
    steps = range(len(prompt) - 1, len(seq))  # the positions whose argmax is the next greedy token
    agree = [int(theirs[p].argmax()) == greedy[i] for i, p in enumerate(steps) if clear[p]]
    assert len(agree) >= 16 and all(agree)
    return prompt, greedy, clear
