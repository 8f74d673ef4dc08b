"""Weight-only quantized decode (`run --weights int8|int4`): the schemes, m7b's quantized CPU kernels bit for bit
against their numpy reference (AVX2 and portable builds), the torch paths, the decode step against the release's own
precision, the cache of quantized weights in the store (built once, damaged, refused), and the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m7b.errors import InvalidInputError, UnsafeError
from m7b.runtime.cpu_kernels_build import build_library, cpu_supports_kernel, find_compiler
from m7b.runtime.cpu_kernels_quant import (
    AVX2_FLAGS,
    LIBRARY_NAME,
    PORTABLE_FLAGS,
    SOURCE,
    QuantRowKernels,
    _checked,
    choose_quant_kernels,
    cpu_vnni_flags,
    load_quant_kernels,
)
from m7b.runtime.fast_decode import prepare_decode
from m7b.runtime.loader import load_release, load_runtime
from m7b.runtime.quant_cache import FILE_NAME, READY_NAME
from m7b.runtime.quant_smoke import check_quantized_logits, quant_bound
from m7b.runtime.quantize import (
    GROUP,
    QuantizedWeight,
    check_scheme,
    dequantize,
    int4_pack_for_torch,
    quantize,
    reference_matvec,
)
from m7b.runtime.quantized_linear import QuantizedLinear, apply_quantized, linear_names, step_bytes
from m7b.store import Store

HAS_COMPILER = find_compiler() is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="m7b's quantized kernels need a C compiler")
needs_avx2 = pytest.mark.skipif(
    not (HAS_COMPILER and cpu_supports_kernel()[0]), reason="the AVX2 build needs x86-64 with AVX2 and a C compiler"
)
BF16 = torch.bfloat16
SCHEMES = ("int8", "int4")


@pytest.fixture(scope="session")
def quant_kernels(tmp_path_factory: pytest.TempPathFactory) -> QuantRowKernels:
    if not HAS_COMPILER:
        pytest.skip("m7b's quantized kernels need a C compiler")
    return load_quant_kernels(tmp_path_factory.mktemp("qkernels"))


@pytest.fixture(scope="session")
def portable_kernels(tmp_path_factory: pytest.TempPathFactory) -> QuantRowKernels:
    """The build a CPU without AVX2 gets (portable C), built here on purpose."""
    compiler = find_compiler()
    if compiler is None:
        pytest.skip("m7b's quantized kernels need a C compiler")
    folder = tmp_path_factory.mktemp("qportable")
    return _checked(build_library(compiler, folder, SOURCE, LIBRARY_NAME, PORTABLE_FLAGS))


@pytest.fixture(scope="session")
def avx2_kernels(tmp_path_factory: pytest.TempPathFactory) -> QuantRowKernels | None:
    """The AVX2 build without VNNI (maddubs + madd for the integer dot products), where the CPU has AVX2."""
    compiler = find_compiler()
    if compiler is None or not cpu_supports_kernel()[0]:
        return None
    folder = tmp_path_factory.mktemp("qavx2")
    return _checked(build_library(compiler, folder, SOURCE, LIBRARY_NAME, AVX2_FLAGS))


def _bits(t: torch.Tensor) -> np.ndarray:
    return t.reshape(-1).contiguous().view(torch.int16).numpy().view(np.uint16)


def _bf16(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(BF16)


# --- the schemes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_values_stay_within_a_step_of_the_weights(scheme: str) -> None:
    """int8: half a step; int4: half a step, a whole one where Q4_0 clamps (+8 steps becomes +7)."""
    w = _bf16((40, 96), 1, 3.0)
    qw = quantize(scheme, w)
    error = (dequantize(qw) - w.float()).abs()
    if scheme == "int8":
        assert qw.q.dtype == torch.int8 and int(qw.q.abs().max()) <= 127
        step = qw.scales[:, None]
    else:
        assert qw.q.shape == (40, 48) and qw.scales.shape == (40, 3) and qw.scales.dtype == torch.float16
        step = 2 * qw.scales.float().abs().repeat_interleave(GROUP, dim=1)
    assert bool((error <= step / 2 * (1 + 1e-2) + 1e-6).all())


def test_int4_blocks_are_llama_cpps_q4_0_blocks() -> None:
    """The same scale and nibbles as llama.cpp's Q4_0 (the gguf package's reference quantizer), block by block."""
    gguf_quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    w = _bf16((24, 128), 2)
    blocks = gguf_quants.quantize(w.float().numpy(), GGMLQuantizationType.Q4_0).reshape(24, 4, 18)
    qw = quantize("int4", w)
    assert np.array_equal(blocks[:, :, 2:].reshape(24, 64), qw.q.numpy())
    assert np.array_equal(blocks[:, :, :2].copy().view(np.float16).reshape(24, 4), qw.scales.numpy())


def test_all_zero_rows_and_groups_quantize_to_zero() -> None:
    w = torch.zeros(3, 64, dtype=BF16)
    w[1, 40] = 2.0
    for scheme in SCHEMES:
        qw = quantize(scheme, w)
        assert torch.equal(dequantize(qw), w.float())


def test_unknown_scheme_and_unquantizable_shapes_are_clear_errors() -> None:
    with pytest.raises(InvalidInputError, match="expected int8 or int4") as raised:
        check_scheme("int3")
    assert raised.value.data.get("field") == "weights"
    with pytest.raises(InvalidInputError, match="multiple of 32"):
        quantize("int8", torch.ones(4, 40))


# --- the kernels, bit for bit ---------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scheme=st.sampled_from(SCHEMES),
    rows=st.integers(1, 70),
    groups=st.integers(1, 12),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_kernel_equals_the_numpy_reference_bit_for_bit(
    quant_kernels, portable_kernels, avx2_kernels, scheme: str, rows: int, groups: int, seed: int, scale: float
) -> None:
    width = groups * GROUP
    first = QuantizedLinear(quantize(scheme, _bf16((rows, width), seed, scale)))
    second = QuantizedLinear(quantize(scheme, _bf16((rows + 3, width), seed + 1)))
    x = _bf16((1, 1, width), seed + 2, scale)
    want = np.concatenate([reference_matvec(m.weight_q, _bits(x)) for m in (first, second)])
    for kernels in (quant_kernels, portable_kernels, avx2_kernels):
        if kernels is not None:
            assert np.array_equal(_bits(kernels.stack(x, (first, second))), want), kernels.path


def test_the_vnni_form_follows_the_cpus_flags() -> None:
    """AVX-VNNI's VEX form where the CPU has it; AVX512-VNNI on 256-bit registers where it has that and AVX512VL
    (Zen 4, Ice Lake); else the AVX2 build's maddubs + madd. Names that only contain a flag's name do not count."""

    def info(*flags: str) -> str:
        return "processor\t: 0\nmodel name\t: x\nflags\t\t: fpu avx2 fma " + " ".join(flags) + "\n\n"

    assert cpu_vnni_flags(info("avx_vnni", "avx512_vnni", "avx512vl", "avx512f")) == ("-mavxvnni",)
    assert cpu_vnni_flags(info("avx512f", "avx512vl", "avx512_vnni")) == (
        "-mavx512vnni",
        "-mavx512vl",
        "-mprefer-vector-width=256",
    )
    assert cpu_vnni_flags(info("avx512f", "avx512_vnni")) == ()  # no 256-bit form without AVX512VL
    assert cpu_vnni_flags(info("avx512_vnnix", "xavx_vnni")) == ()
    assert cpu_vnni_flags("") == ()


@needs_compiler
def test_kernel_products_are_close_to_the_release_precision(quant_kernels) -> None:
    for scheme, bound in (("int8", 0.03), ("int4", 0.15)):
        w, x = _bf16((256, 1024), 3), _bf16((1, 1, 1024), 4)
        want = F.linear(x.float(), w.float())
        got = quant_kernels.stack(x, (QuantizedLinear(quantize(scheme, w)),)).float()
        assert ((got - want).norm() / want.norm()).item() <= bound


@needs_compiler
def test_inputs_the_kernels_do_not_take_go_to_torch(quant_kernels) -> None:
    linear = QuantizedLinear(quantize("int8", _bf16((8, 64), 5)))
    rows = _bf16((1, 3, 64), 6)  # a prefill chunk: several rows
    assert torch.equal(quant_kernels.stack(rows, (linear,)), linear(rows))
    x32 = _bf16((1, 1, 64), 7).float()
    assert torch.equal(quant_kernels.stack(x32, (linear,)), linear(x32))
    plain = torch.nn.Linear(64, 8, bias=False).to(BF16)  # a linear left in the release's precision
    x = _bf16((1, 1, 64), 8)
    with torch.inference_mode():
        assert torch.equal(quant_kernels.stack(x, (linear, plain)), torch.cat([linear(x), plain(x)], -1))


def test_choosing_kernels_names_what_was_asked() -> None:
    weight = quantize("int8", torch.ones(4, 32))
    assert choose_quant_kernels("torch", weight, None).kernels is None
    with pytest.raises(InvalidInputError, match="expected one of auto, m7b, torch"):
        choose_quant_kernels("fast", weight, None)
    assert "no linear" in choose_quant_kernels("auto", None, None).note


# --- the torch paths -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_torch_forward_equals_the_dequantized_product(scheme: str) -> None:
    qw = quantize(scheme, _bf16((48, 128), 9))
    x = _bf16((2, 5, 128), 10)
    want = F.linear(x.float(), dequantize(qw))
    got = QuantizedLinear(qw)(x)
    assert got.dtype == BF16 and ((got.float() - want).abs().max() <= want.abs().max() / 64).item()


def test_int4_in_torchs_packed_layout_gives_the_same_product() -> None:
    """The layout the CUDA path hands `_weight_int4pack_mm`, checked through torch's CPU twin of that op."""
    if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
        pytest.skip("this torch has no CPU int4 packed matmul")
    qw = quantize("int4", _bf16((64, 256), 11))
    values, scales_and_zeros = int4_pack_for_torch(qw)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(values, 2)
    x = _bf16((3, 256), 12)
    got = torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, scales_and_zeros.to(BF16)).float()
    want = x.float() @ dequantize(qw).t()
    assert ((got - want).norm() / want.norm()).item() <= 0.01


# --- the model -------------------------------------------------------------------------------------------------------


def _quantized(tiny_release_src: Path, scheme: str, home: Path):
    return load_release(str(tiny_release_src), store=Store(home), device="cpu", weights=scheme)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_block_linear_is_quantized_and_the_output_kept(tiny_release_src, tmp_path, scheme: str) -> None:
    rt = _quantized(tiny_release_src, scheme, tmp_path / "home")
    assert rt.quantized is not None and rt.quantized.kept == ("output",)
    names = {n for n, m in rt.model.named_modules() if isinstance(m, QuantizedLinear)}
    assert len(names) == 7 * rt.args.n_layers and "output" not in names
    bf16 = load_runtime(tiny_release_src, torch.device("cpu"))
    assert step_bytes(rt.model) < step_bytes(bf16.model)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SCHEMES)
def test_quantized_decode_steps_stay_within_the_bound(tiny_release_src, tmp_path, scheme: str) -> None:
    """The torch step and m7b's kernels, teacher-forced past the window, against the release's own precision."""
    rt = _quantized(tiny_release_src, scheme, tmp_path / "home")
    reference = load_runtime(tiny_release_src, torch.device("cpu"))
    eager = check_quantized_logits(rt.model, reference.model, scheme, 0)
    assert eager.passed and eager.value is not None and 0 < eager.value <= quant_bound(scheme, rt.args.n_layers)
    if HAS_COMPILER:
        prepared = prepare_decode(rt.model, "eager", 96, None, "m7b", tmp_path / "kernels")
        assert prepared.cpu_kernels.startswith("m7b-quant")
        kernels = check_quantized_logits(rt.model, reference.model, scheme, 0, prepared.fn, "kernels")
        assert kernels.passed and kernels.value is not None
        assert abs(kernels.value - eager.value) <= 0.5 * eager.value  # the activations' rounding, no more


def test_a_broken_scheme_fails_the_bound(tiny_release_src, tmp_path) -> None:
    """Swapped nibbles (a packing bug) are caught by the smoke bound."""
    rt = _quantized(tiny_release_src, "int4", tmp_path / "home")
    for module in rt.model.modules():
        if isinstance(module, QuantizedLinear):
            module.q = ((module.q >> 4) | (module.q << 4)).contiguous()
    reference = load_runtime(tiny_release_src, torch.device("cpu"))
    assert not check_quantized_logits(rt.model, reference.model, "int4", 0).passed


@needs_avx2
def test_the_block_in_one_call_equals_the_per_operation_step(tiny_release_src, tmp_path, quant_kernels) -> None:
    from m7b.runtime.quant_decode import quant_kernel_step
    from m7b.runtime.smoke import synthetic_ids, teacher_forced_logits

    rt = _quantized(tiny_release_src, "int8", tmp_path / "home")
    rt.model.setup_caches(1, 40)
    ids = synthetic_ids(40, rt.args.vocab_size, 1, torch.device("cpu"))
    whole = teacher_forced_logits(rt.model, ids, 8, quant_kernel_step(quant_kernels))

    class PerOp:
        def __getattr__(self, name: str):
            return getattr(quant_kernels, name)

        def __call__(self, x, module):
            return quant_kernels(x, module)

        def block_step(self, *args) -> bool:
            return False

    per_op = teacher_forced_logits(rt.model, ids, 8, quant_kernel_step(PerOp()))  # type: ignore[arg-type]
    assert (whole - per_op).abs().max().item() <= 0.02 * per_op.abs().max().item()


def test_apply_refuses_a_weight_of_another_shape(tiny_runtime) -> None:
    name = linear_names(tiny_runtime.model)[0]
    with pytest.raises(ValueError, match="no linear"):
        wrong = QuantizedWeight("int8", torch.zeros(3, 32, dtype=torch.int8), torch.ones(3))
        apply_quantized(tiny_runtime.model, {name: wrong})


# --- the cache in the store ------------------------------------------------------------------------------------------


def _cache_files(home: Path) -> list[Path]:
    return sorted((home / "cache" / "quantized").glob(f"*/{FILE_NAME}"))


def test_quantized_weights_are_built_once_then_found(tiny_release_src, tmp_path) -> None:
    home = tmp_path / "home"
    first = _quantized(tiny_release_src, "int8", home)
    assert first.quantized is not None and first.quantized.cache == "built"
    [path] = _cache_files(home)
    before = path.stat().st_mtime_ns
    second = _quantized(tiny_release_src, "int8", home)
    assert second.quantized is not None and second.quantized.cache == "hit"
    assert second.quantized.source_digest_from == "recorded"  # the source is not hashed again either
    assert path.stat().st_mtime_ns == before
    for name, w in first.quantized.weights.items():
        assert torch.equal(w.q, second.quantized.weights[name].q)
    other = _quantized(tiny_release_src, "int4", home)  # another scheme: its own file
    assert other.quantized is not None and other.quantized.cache == "built" and len(_cache_files(home)) == 2


@pytest.mark.parametrize("damage", ["overwrite", "truncate", "ready"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(tiny_release_src, tmp_path, damage: str) -> None:
    home = tmp_path / "home"
    good = _quantized(tiny_release_src, "int8", home).quantized
    assert good is not None
    want = {name: w.q.clone() for name, w in good.weights.items()}  # the file's pages are mapped: keep a copy
    del good
    [path] = _cache_files(home)
    if damage == "overwrite":  # the same size, other bytes
        data = bytearray(path.read_bytes())
        data[-100:] = bytes(100)
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        with path.open("r+b") as fh:
            fh.truncate(path.stat().st_size // 2)
    else:
        ready = path.parent / READY_NAME
        ready.write_text(json.dumps({**json.loads(ready.read_text()), "scheme": "int4"}))
    again = _quantized(tiny_release_src, "int8", home).quantized
    assert again is not None and again.cache == "rebuilt" and "damaged" in again.note
    for name, q in want.items():
        assert torch.equal(q, again.weights[name].q)
    assert _quantized(tiny_release_src, "int8", home).quantized.cache == "hit"  # type: ignore[union-attr]


def test_a_touched_but_unchanged_file_is_hashed_and_kept(tiny_release_src, tmp_path) -> None:
    home = tmp_path / "home"
    _quantized(tiny_release_src, "int4", home)
    [path] = _cache_files(home)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert _quantized(tiny_release_src, "int4", home).quantized.cache == "hit"  # type: ignore[union-attr]


def test_a_store_that_refuses_the_cache_quantizes_in_memory(tiny_release_src, tmp_path) -> None:
    home = tmp_path / "home"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "quantized").write_text("not a folder")
    notes: list[str] = []
    rt = load_release(str(tiny_release_src), store=Store(home), device="cpu", weights="int8", on_note=notes.append)
    assert rt.quantized is not None and rt.quantized.cache == "memory" and rt.quantized.path is None
    assert notes and "in memory" in notes[0] and "paid again" in notes[0]
    assert (home / "cache" / "quantized").read_text() == "not a folder"


def test_a_link_in_the_cache_is_refused_not_followed(tiny_release_src, tmp_path) -> None:
    home = tmp_path / "home"
    target = tmp_path / "victim"
    target.mkdir()
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "quantized").symlink_to(target)
    with pytest.raises(UnsafeError, match="symlink") as raised:
        _quantized(tiny_release_src, "int8", home)
    assert raised.value.exit_code == 6 and list(target.iterdir()) == []


# --- the CLI ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_with_weights_says_so_in_its_output_and_json(cli_inproc, tiny_release_src, m7b_home) -> None:
    args = ("run", str(tiny_release_src), "--prompt", "Hello", "--max-tokens", "6", "--device", "cpu")
    text = cli_inproc(*args, "--weights", "int8")
    assert text.code == 0, text.stderr
    assert "weights int8 (weight-only, not the release's own precision)" in text.stderr
    assert "read per token" in text.stderr
    record = json.loads(cli_inproc(*args, "--weights", "int4", "--json").stdout)
    assert record["weights"] == "int4" and record["quant_cache"] == "built" and record["generated_tokens"] == 6
    assert record["weight_bytes_per_token"] > record["quantized_bytes"] > 0
    plain = json.loads(cli_inproc(*args, "--json").stdout)
    assert plain["weights"] is None and plain["weight_bytes_per_token"] > record["weight_bytes_per_token"]
    if HAS_COMPILER:
        assert record["cpu_kernels"].startswith("m7b-quant")


def test_run_with_unknown_weights_is_exit_4_naming_the_option(cli_inproc, tiny_release_src, m7b_home) -> None:
    result = cli_inproc("run", str(tiny_release_src), "--prompt", "Hi", "--weights", "fp4")
    assert result.code == 4 and "--weights" in result.stderr and "int8 or int4" in result.stderr
    assert not (m7b_home / "cache" / "quantized").exists()


@pytest.mark.slow
def test_smoke_with_weights_checks_against_the_releases_precision(cli_inproc, tiny_release_src, m7b_home) -> None:
    result = cli_inproc("smoke", str(tiny_release_src), "--weights", "int8", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["weights"] == "int8" and doc["passed"]
    names = [c["name"] for c in doc["checks"]]
    assert "int8 logits (eager step) near the release's own precision" in names
    if HAS_COMPILER:
        assert any(n.startswith("int8 logits (CPU kernels m7b-quant") for n in names)


@pytest.mark.slow
def test_native_folder_and_checkpoint_share_nothing_but_give_the_same_quantized_tokens(
    cli_inproc, tiny_release_src, tmp_path, m7b_home
) -> None:
    """The key is the weights file's sha256: a copy of the release in another folder finds the same cache."""
    copy = Path(shutil.copytree(tiny_release_src, tmp_path / "copy"))
    args = ("--prompt", "Hello", "--max-tokens", "8", "--weights", "int8", "--json")
    a = json.loads(cli_inproc("run", str(tiny_release_src), *args).stdout)
    b = json.loads(cli_inproc("run", str(copy), *args).stdout)
    assert a["token_ids"] == b["token_ids"] and a["source_sha256"] == b["source_sha256"]


@pytest.mark.slow  # a CPU compile: 10 s or more
@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_compiled_step_on_quantized_weights_equals_the_eager_one(tiny_release_src, tmp_path, scheme: str) -> None:
    """What CUDA runs (`--weights` through the compiled step), compiled here on the CPU as one graph."""
    import torch._dynamo

    from m7b.runtime.smoke import synthetic_ids, teacher_forced_logits

    rt = _quantized(tiny_release_src, scheme, tmp_path / "home")
    torch._dynamo.reset()
    try:
        prepared = prepare_decode(rt.model, "compile", 40, tmp_path / "compile", "auto")
        ids = synthetic_ids(40, rt.args.vocab_size, 2, torch.device("cpu"))
        compiled = teacher_forced_logits(rt.model, ids, 8, prepared.fn)
    finally:
        torch._dynamo.reset()
    from m7b.runtime.generate import decode_one_token

    eager = teacher_forced_logits(rt.model, ids, 8, decode_one_token)
    assert (compiled - eager).abs().max().item() <= 0.02 * eager.abs().max().item()


def test_a_mixture_of_experts_with_weights_is_refused_before_loading(
    mixtral_tiny: Path, m7b_home: Path, cli: Any
) -> None:
    from m7b.errors import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError, match="mixture of experts"):
        load_release(str(mixtral_tiny), device="cpu", weights="int8")
    assert not (Store.from_env().quant_cache_dir).exists() or not any(Store.from_env().quant_cache_dir.iterdir())
    result = cli("run", str(mixtral_tiny), "--prompt", "hi", "--weights", "int4", "--max-tokens", "2")
    assert result.code == 4, result.stderr
    assert "run it without --weights" in result.stderr


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_any_cpuinfo_text_gives_one_of_the_three_builds(text: str) -> None:
    assert cpu_vnni_flags(text) in {(), ("-mavxvnni",), ("-mavx512vnni", "-mavx512vl", "-mprefer-vector-width=256")}
