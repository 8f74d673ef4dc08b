"""Issue 17, item 1, for `m7b run`'s caches under M7B_HOME/cache: the compile cache folder and the kernel cache
folder are created by m7b and never followed when a symlink stands there (exit 6, the link's target untouched);
the kernel build's temporary name, m7b's own, is cleared without following a link there."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch

from m7b.errors import UnsafeError
from m7b.runtime.cpu_kernels_build import (
    LIBRARY_NAME,
    build_key,
    build_library,
    cpu_supports_kernel,
    find_compiler,
    load_kernels,
)
from m7b.runtime.fast_decode import compile_cache_dir, compile_key, prepare_decode, static_seq_len

PRECIOUS = b"not m7b's: never truncated nor replaced\n"
needs_kernels = pytest.mark.skipif(
    not (cpu_supports_kernel()[0] and find_compiler() is not None),
    reason="m7b's CPU kernels need x86-64 with AVX2 and a C compiler",
)


def victim(tmp_path: Path) -> Path:
    folder = tmp_path / "victim"
    folder.mkdir()
    (folder / "keep.bin").write_bytes(PRECIOUS)
    return folder


def test_a_compile_cache_folder_that_is_a_link_is_refused(tiny_runtime, tmp_path: Path) -> None:
    root = tmp_path / "cache" / "compile"
    root.mkdir(parents=True)
    model = tiny_runtime.model
    model.setup_caches(1, static_seq_len(8, model.window))  # what prepare_decode sizes, which the key holds
    folder = compile_cache_dir(root, compile_key(model, torch.device("cpu"), "compile"))
    target = victim(tmp_path)
    folder.symlink_to(target)
    with pytest.raises(UnsafeError, match="is a symlink") as raised:
        prepare_decode(model, "compile", 8, root)
    assert raised.value.exit_code == 6 and str(folder) in str(raised.value)
    assert sorted(p.name for p in target.iterdir()) == ["keep.bin"]
    assert (target / "keep.bin").read_bytes() == PRECIOUS
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ or os.environ["TORCHINDUCTOR_CACHE_DIR"] != str(folder)


@needs_kernels
def test_a_kernel_cache_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    compiler = find_compiler()
    assert compiler is not None
    root = tmp_path / "cache" / "kernels"
    root.mkdir(parents=True)
    target = victim(tmp_path)
    (root / build_key(compiler)).symlink_to(target)
    with pytest.raises(UnsafeError, match="is a symlink") as raised:
        load_kernels(root)
    assert raised.value.exit_code == 6
    assert sorted(p.name for p in target.iterdir()) == ["keep.bin"]


@needs_kernels
@pytest.mark.slow
def test_the_kernel_builds_temporary_name_that_is_a_link_is_cleared_not_followed(tmp_path: Path) -> None:
    compiler = find_compiler()
    assert compiler is not None
    folder = tmp_path / "cache" / "kernels" / "k"
    folder.mkdir(parents=True)
    target = victim(tmp_path) / "keep.bin"
    partial = folder / f".{LIBRARY_NAME}.{os.getpid()}.{threading.get_ident()}"
    partial.symlink_to(target)  # the compiler's -o would write through it
    built = build_library(compiler, folder)
    assert built == folder / LIBRARY_NAME and built.is_file() and not built.is_symlink()
    assert not partial.exists() and not partial.is_symlink()
    assert target.read_bytes() == PRECIOUS


@pytest.mark.slow
@pytest.mark.parametrize(
    ("decode", "rel"),
    [("eager", "cache"), ("eager", "cache/kernels"), ("compile", "cache"), ("compile", "cache/compile")],
)
def test_run_refuses_a_cache_folder_that_is_a_link(cli, m7b_home: Path, tiny_release_src, tmp_path, decode, rel):
    target = victim(tmp_path)
    link = m7b_home / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    result = cli(
        "run", tiny_release_src, "-p", "Hello", "--max-tokens", "2", "--device", "cpu", "--decode", decode, timeout=300
    )
    assert result.code == 6, result.stderr
    assert str(link) in result.stderr and "symlink" in result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep.bin"] and (target / "keep.bin").read_bytes() == PRECIOUS
