"""m7b's CPU kernels (runtime/cpu_kernels_bf16.c): each against torch's formula, the decode step on them against the
eager step (teacher-forced past the window), and the build cache: built once, rebuilt when damaged, built in a
temporary folder when the store refuses, declined with a reason where they cannot apply."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m7b.errors import InvalidInputError
from m7b.runtime.cpu_kernels import KERNEL_NAME, BF16RowKernels
from m7b.runtime.cpu_kernels_build import (
    LIBRARY_NAME,
    SOURCE,
    KernelBuildError,
    build_key,
    choose_kernels,
    cpu_supports_kernel,
    find_compiler,
    load_kernels,
    reference_attention,
)
from m7b.runtime.fast_decode import prepare_decode, row_kernel_step
from m7b.runtime.generate import GenerationConfig, decode_one_token, generate
from m7b.runtime.loader import build_model
from m7b.runtime.model import RMSNorm
from m7b.runtime.smoke import PAST_WINDOW, check_decode_paths, synthetic_ids, teacher_forced_logits

AVAILABLE = cpu_supports_kernel()[0] and find_compiler() is not None
needs_kernels = pytest.mark.skipif(not AVAILABLE, reason="m7b's CPU kernels need x86-64 with AVX2 and a C compiler")
BF16 = torch.bfloat16


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> BF16RowKernels:
    if not AVAILABLE:
        pytest.skip("m7b's CPU kernels need x86-64 with AVX2 and a C compiler")
    return load_kernels(tmp_path_factory.mktemp("kernels"))


def _bf16(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale).to(BF16)


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Within bf16 rounding of the float32 result (plus a tiny share of the largest value for summation order)."""
    want = want.float()
    bound = want.abs() / 128 + want.abs().max() / 512 + 1e-6
    assert got.shape == want.shape and got.dtype == BF16
    assert bool(((got.float() - want).abs() <= bound).all()), (got.float() - want).abs().max()


@needs_kernels
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.integers(1, 70),
    width=st.integers(1, 300),
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 1, 1e3]),
)
def test_product_equals_torch_for_any_shape(kernels, rows: int, width: int, seed: int, scale: float) -> None:
    weight, x = _bf16((rows, width), seed, scale), _bf16((1, 1, width), seed + 1)
    _close(kernels(x, weight), F.linear(x.float(), weight.float()))
    other = _bf16((rows + 5, width), seed + 2)
    stacked = kernels.stack(x, (weight, other))
    _close(stacked, torch.cat([F.linear(x.float(), weight.float()), F.linear(x.float(), other.float())], dim=-1))


@needs_kernels
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(width=st.integers(1, 700), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-3, 1, 1e3]))
def test_rms_norm_and_swiglu_equal_the_models_formulas(kernels, width: int, seed: int, scale: float) -> None:
    x, weight = _bf16((1, 1, width), seed, scale), _bf16((width,), seed + 1)
    norm = RMSNorm(width, 1e-5).to(BF16)
    norm.weight.data.copy_(weight)
    with torch.inference_mode():
        want = norm(x)
    got = kernels.rms_norm(x, weight, 1e-5)
    assert got is not None and got.dtype == BF16
    assert (got.float() - want.float()).abs().max() <= want.float().abs().max() / 128 + 1e-6
    gate, up = _bf16((1, 1, width), seed + 2, 4.0), _bf16((1, 1, width), seed + 3)
    _close(kernels.swiglu(gate, up), F.silu(gate.float()) * up.float())


@needs_kernels
def test_inputs_the_kernels_do_not_take_go_to_torch(kernels) -> None:
    weight, x = _bf16((12, 40), 0), _bf16((1, 1, 40), 1)
    strided = _bf16((40, 12), 2).t()  # a transposed view: not row-major
    assert torch.equal(kernels(x, strided), F.linear(x, strided))
    rows = _bf16((1, 3, 40), 3)  # a prefill chunk: several rows
    assert torch.equal(kernels(rows, weight), F.linear(rows, weight))
    x32 = x.float()
    assert torch.equal(kernels(x32, weight.float()), F.linear(x32, weight.float()))
    assert kernels.rms_norm(x.float(), weight[0], 1e-5) is None
    nan = x.clone()
    nan[0, 0, 3] = float("nan")
    assert torch.isnan(kernels(nan, weight)).all()  # a NaN reaches every output, as in torch


def _kernel_twin(args, state: dict[str, torch.Tensor]):
    return build_model(args, {k: v.to(BF16) for k, v in state.items()}, torch.device("cpu"), BF16)


class PerBlock:
    """The kernels without the whole-step call: one call per block."""

    def __init__(self, kernels: BF16RowKernels) -> None:
        self.kernels = kernels

    def __getattr__(self, name: str):
        return getattr(self.kernels, name)

    def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.kernels(x, weight)

    def decode_step(self, *args, **kwargs) -> None:
        return None


class PerOp(PerBlock):
    """The kernels without the whole-step and whole-block calls: each layer through the module, the kernels per
    operation."""

    def block_step(self, *args, **kwargs) -> bool:
        return False


@needs_kernels
@pytest.mark.slow
@pytest.mark.parametrize("path", ["step", "block", "operation"])
# (4, 2, 16): the tiny release as it is; head_dim 24 has a tail past the 16-wide blocks; 10 query heads over 2
# key/value heads make groups of 5, one full batch of 4 heads and a short one in the attention kernel
@pytest.mark.parametrize("heads", [(4, 2, 16), (4, 2, 24), (10, 2, 16)])
def test_decode_on_the_kernels_gives_the_eager_logits_past_the_window(kernels, tiny_runtime, tiny_state, heads, path):
    n_heads, n_kv_heads, head_dim = heads
    args = replace(tiny_runtime.args, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim)
    state = dict(tiny_state)
    if args != tiny_runtime.args:  # q/k/v/o for the new heads, random but fixed values
        gen = torch.Generator().manual_seed(5)
        for i in range(args.n_layers):
            p = f"layers.{i}.attention."
            state[p + "wq.weight"] = torch.randn(args.n_heads * head_dim, args.dim, generator=gen) * 0.1
            state[p + "wk.weight"] = torch.randn(args.n_kv_heads * head_dim, args.dim, generator=gen) * 0.1
            state[p + "wv.weight"] = torch.randn(args.n_kv_heads * head_dim, args.dim, generator=gen) * 0.1
            state[p + "wo.weight"] = torch.randn(args.dim, args.n_heads * head_dim, generator=gen) * 0.1
    model = _kernel_twin(args, state)
    step = row_kernel_step({"step": kernels, "block": PerBlock(kernels), "operation": PerOp(kernels)}[path])
    checks = check_decode_paths(model, {"kernels": step}, BF16, 0)
    by_name = {c.name: c for c in checks}
    assert by_name["kernels decode step equals eager"].passed, by_name["kernels decode step equals eager"].detail
    # The kernels' step is no closer to eager than bf16 rounding allows, and no farther than eager is from float32.
    total = model.window + PAST_WINDOW
    ids = synthetic_ids(total, args.vocab_size, 0, torch.device("cpu"))
    reference = build_model(args, {k: v.float() for k, v in state.items()}, torch.device("cpu"), torch.float32)
    reference.setup_caches(1, total)
    model.setup_caches(1, total)
    exact = teacher_forced_logits(reference, ids, model.window - 8, decode_one_token)
    eager = teacher_forced_logits(model, ids, model.window - 8, decode_one_token)
    fast = teacher_forced_logits(model, ids, model.window - 8, step)
    top = exact.abs().max()
    assert (fast - exact).abs().max() / top <= 2 * (eager - exact).abs().max() / top + 1e-3


@needs_kernels
@pytest.mark.slow
def test_a_broken_kernel_fails_the_check(kernels, tiny_runtime, tiny_state) -> None:
    """The equivalence check sees a kernel that computes the wrong thing (here: a product that drops its last row)."""

    class Broken(PerOp):
        def __call__(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
            y = self.kernels(x, weight)
            y[..., -1] = 0
            return y

    model = _kernel_twin(tiny_runtime.args, tiny_state)
    checks = check_decode_paths(model, {"broken": row_kernel_step(Broken(kernels))}, BF16, 0)
    assert not {c.name: c for c in checks}["broken decode step equals eager"].passed


@needs_kernels
@pytest.mark.slow
def test_prepared_eager_step_uses_the_kernels_for_bf16_and_generates(tiny_runtime, tiny_state, tmp_path) -> None:
    model = _kernel_twin(tiny_runtime.args, tiny_state)
    prepared = prepare_decode(model, "eager", 40, None, "auto", tmp_path)
    assert prepared.cpu_kernels == KERNEL_NAME and prepared.fn is not decode_one_token
    record = prepared.record()
    assert record["cpu_kernels"] == KERNEL_NAME and str(tmp_path) in record["cpu_kernels_note"]
    result = generate(
        model, [1, 22557, 1055], GenerationConfig(max_tokens=20, stop_at_eos=False), decode_fn=prepared.fn
    )
    assert len(result.tokens) == 20
    # the step hands the kernels to the model's modules call by call: no module holds them
    assert not any(isinstance(v, BF16RowKernels) for m in model.modules() for v in vars(m).values())
    torch_step = prepare_decode(model, "eager", 40, None, "torch", tmp_path)
    assert torch_step.cpu_kernels == "torch" and torch_step.fn is decode_one_token


def test_kernels_are_declined_with_a_reason(tiny_runtime, tmp_path, monkeypatch) -> None:
    weight32 = tiny_runtime.model.output.weight  # float32 weights
    choice = choose_kernels("auto", weight32, tmp_path)
    assert choice.kernels is None and choice.name == "torch" and "bfloat16" in choice.note
    with pytest.raises(InvalidInputError, match="read bfloat16 weights") as raised:
        choose_kernels("m7b", weight32, tmp_path)
    assert raised.value.exit_code == 4
    with pytest.raises(InvalidInputError, match="expected one of auto, m7b, torch"):
        choose_kernels("fast", weight32, tmp_path)
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    choice = choose_kernels("auto", weight32.to(BF16), tmp_path / "k")
    assert choice.kernels is None and ("$CC is" in choice.note or "AVX2" in choice.note)
    assert not (tmp_path / "k").exists()
    with pytest.raises(InvalidInputError, match=r"choose auto or torch \(cpu_kernels\)") as raised:
        choose_kernels("m7b", weight32.to(BF16), tmp_path / "k")
    assert "--" not in str(raised.value)  # a library message names no CLI flag: the CLI words `cpu_kernels`
    with pytest.raises(InvalidInputError, match="serve the eager CPU step"):
        prepare_decode(tiny_runtime.model, "compile", 8, tmp_path, "m7b")


def _load_in_a_new_process(root: Path) -> None:
    load = "from m7b.runtime.cpu_kernels_build import load_kernels"
    code = f"from pathlib import Path; {load}; load_kernels(Path({str(root)!r}))"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


@needs_kernels
@pytest.mark.slow
def test_the_library_is_built_once_and_rebuilt_when_damaged(tmp_path) -> None:
    # Separate processes, as separate runs are: a process keeps a loaded library mapped, so this one must not have
    # loaded the file it then damages.
    _load_in_a_new_process(tmp_path)
    (built,) = tmp_path.glob(f"*/{LIBRARY_NAME}")
    stamp = built.stat().st_mtime_ns
    _load_in_a_new_process(tmp_path)
    assert built.stat().st_mtime_ns == stamp  # found, not built again
    built.write_bytes(b"\x7fELF not really a library")
    kernels = load_kernels(tmp_path)  # damaged: removed and built again
    assert built.stat().st_size > 1000 and kernels.path == built
    assert [p.name for p in built.parent.iterdir()] == [LIBRARY_NAME]  # no partial build left behind


@needs_kernels
@pytest.mark.slow
def test_a_store_that_refuses_the_cache_still_gets_the_kernels(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    kernels = load_kernels(blocker / "kernels")  # built in a temporary folder, loaded, removed
    assert kernels.path.is_relative_to(Path(tempfile.gettempdir())) and not kernels.path.exists()
    assert blocker.read_text() == "not a folder"
    _close(
        kernels(_bf16((1, 1, 32), 0), _bf16((8, 32), 1)),
        F.linear(_bf16((1, 1, 32), 0).float(), _bf16((8, 32), 1).float()),
    )


# Every function the kernel source exports, each doing nothing: the right symbols, the wrong results.
WRONG_LIBRARY = "".join(
    f"void {name}(void) {{}}\n"
    for name in re.findall(r"^(?:void|int|long) (m7b_\w+)\(", SOURCE.read_text(), flags=re.MULTILINE)
)


@needs_kernels
@pytest.mark.slow
def test_a_cached_library_that_computes_wrongly_is_replaced_in_the_same_run(tmp_path) -> None:
    """A library with the right symbols and wrong results (one that does nothing) sits in the cache: its self-test
    fails, it is rebuilt, and this very process uses the rebuilt one (not the wrong one the loader still maps)."""
    compiler = find_compiler()
    folder = tmp_path / build_key(compiler)
    folder.mkdir()
    (tmp_path / "wrong.c").write_text(WRONG_LIBRARY)
    built = subprocess.run([*compiler, "-shared", "-fPIC", str(tmp_path / "wrong.c"), "-o", str(folder / LIBRARY_NAME)])
    assert built.returncode == 0
    with pytest.raises(KernelBuildError, match="self-test"):
        cpu_kernels_module()._checked(folder / LIBRARY_NAME)  # loaded here: the loader now maps it by that name
    kernels = load_kernels(tmp_path)
    assert kernels.path == folder / LIBRARY_NAME and (folder / LIBRARY_NAME).stat().st_size > 10_000
    x, weight = _bf16((1, 1, 64), 0), _bf16((10, 64), 1)
    _close(kernels(x, weight), F.linear(x.float(), weight.float()))


def cpu_kernels_module():
    import m7b.runtime.cpu_kernels_build as module

    return module


@pytest.mark.slow
def test_a_library_that_fails_its_self_test_is_not_used(tmp_path, monkeypatch) -> None:
    if not AVAILABLE:
        pytest.skip("m7b's CPU kernels need x86-64 with AVX2 and a C compiler")

    def wrong(kernels: BF16RowKernels) -> None:
        raise KernelBuildError("self-test product 4x16: max |difference| 3 from torch, above 0.1")

    monkeypatch.setattr(cpu_kernels_module(), "self_test", wrong)
    choice = choose_kernels("auto", torch.ones(4, 4, dtype=BF16), tmp_path)
    assert choice.kernels is None and "self-test" in choice.note


@needs_kernels
def test_attention_and_block_decline_what_they_cannot_take_and_touch_nothing(kernels, tiny_runtime, tiny_state):
    """Every pointer the C code would follow is checked first: a wrong size, head layout, slot, device or dtype
    is a decline (None / False), with the caches and the row unchanged."""
    from m7b.runtime.row_kernels import DecodePosition, block_weights, decode_position

    n_heads, n_kv, head_dim, capacity = 4, 2, 16, 8
    qkv = _bf16((1, 1, (n_heads + 2 * n_kv) * head_dim), 0)
    pairs = torch.rand(head_dim // 2, 2)
    cache = _bf16((1, n_kv, capacity, head_dim), 1)
    good = DecodePosition(
        pairs,
        cache.clone(),
        cache.clone(),
        torch.tensor([3]),
        torch.ones(1, capacity, dtype=torch.bool),
        (n_heads, n_kv, head_dim),
    )
    assert kernels.attention_step(qkv, good) is not None
    bad = {
        "slot past the cache": replace(good, slots=torch.tensor([capacity])),
        "negative slot": replace(good, slots=torch.tensor([-1])),
        "two slots": replace(good, slots=torch.tensor([1, 2])),
        "short mask": replace(good, mask=torch.ones(1, capacity - 1, dtype=torch.bool)),
        "mask of bytes": replace(good, mask=torch.ones(1, capacity, dtype=torch.uint8)),
        "mask elsewhere": replace(good, mask=torch.ones(1, capacity, dtype=torch.bool, device="meta")),
        "short rotations": replace(good, freqs=torch.rand(head_dim // 2 - 1, 2)),
        "rotations elsewhere": replace(good, freqs=torch.rand(head_dim // 2, 2, device="meta")),
        "float64 rotations": replace(good, freqs=torch.rand(head_dim // 2, 2, dtype=torch.float64)),
        "heads not grouped": replace(good, heads=(3, 2, head_dim)),
        "odd head": replace(good, heads=(n_heads, n_kv, 15)),
        "head too large": replace(good, heads=(1, 1, 2048)),
        "cache of another shape": replace(good, k_cache=_bf16((1, n_kv, capacity, head_dim + 2), 2)),
        "strided cache": replace(good, v_cache=_bf16((1, n_kv, head_dim, capacity), 3).transpose(2, 3)),
        "float32 cache": replace(good, k_cache=cache.float()),
    }
    for what, position in bad.items():
        before = (position.k_cache.clone(), position.v_cache.clone()) if position.k_cache.device.type == "cpu" else None
        assert kernels.attention_step(qkv, position) is None, what
        if before is not None:
            assert torch.equal(position.k_cache, before[0]) and torch.equal(position.v_cache, before[1]), what
    assert kernels.attention_step(qkv[..., :-1], good) is None  # a q|k|v row of the wrong size
    model = _kernel_twin(tiny_runtime.args, tiny_state)
    block = model.layers[0]
    model.setup_caches(1, 8)
    a, f = block.attention, block.feed_forward
    weights = (a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight, f.w1.weight, f.w3.weight, f.w2.weight)
    assert all(
        got is want for got, want in zip(block_weights(block), weights, strict=True)
    )  # the C ABI's order, as the row-kernel step hands them over
    norms = (block.attention_norm.weight, block.ffn_norm.weight)
    mask = torch.ones(1, 8, dtype=torch.bool)
    position = decode_position(a, torch.rand(a.head_dim // 2, 2), torch.tensor([2]), mask)
    x = _bf16((1, 1, model.args.dim), 4)
    assert kernels.block_step(x.clone(), norms, 1e-5, weights, position)
    strided_norm = _bf16((model.args.dim, 2), 5)[:, 0]
    cases = {
        "six weights": (x, norms, weights[:6], position),
        "w2 transposed": (x, norms, (*weights[:6], weights[6].t().contiguous()), position),
        # the same memory as the weight that passed a moment ago, read with other strides: checked again
        "wq's memory strided": (x, norms, (weights[0].as_strided(weights[0].shape, (1, 2)), *weights[1:]), position),
        "strided norm": (x, (strided_norm, norms[1]), weights, position),
        "norm elsewhere": (x, (norms[0].to("meta"), norms[1]), weights, position),
        "slot past the cache": (x, norms, weights, replace(position, slots=torch.tensor([8]))),
        "float32 row": (x.float(), norms, weights, position),
        "two rows": (_bf16((1, 2, model.args.dim), 6), norms, weights, position),
    }
    for what, (row, n, w, p) in cases.items():
        kept, caches = row.clone(), (p.k_cache.clone(), p.v_cache.clone())
        assert not kernels.block_step(row, n, 1e-5, w, p), what
        assert torch.equal(row, kept) and torch.equal(p.k_cache, caches[0]) and torch.equal(p.v_cache, caches[1]), what
    assert kernels.rms_norm(x, strided_norm, 1e-5) is None  # never a pointer to a temporary copy


@needs_kernels
@pytest.mark.slow
def test_m7b_run_reports_its_cpu_kernels(cli_inproc, tiny_release_src, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("M7B_HOME", str(tmp_path / "home"))
    result = cli_inproc("run", str(tiny_release_src), "-p", "Hello", "--max-tokens", "5", "--device", "cpu", "--json")
    assert result.code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dtype"] == "bfloat16" and doc["cpu_kernels"] == KERNEL_NAME
    assert str(tmp_path / "home" / "cache" / "kernels") in doc["cpu_kernels_note"]
    result = cli_inproc("run", str(tiny_release_src), "-p", "Hi", "--device", "cpu", "--cpu-kernels", "torch", "--json")
    assert result.code == 0 and json.loads(result.stdout)["cpu_kernels"] == "torch"
    result = cli_inproc(
        "run", str(tiny_release_src), "-p", "Hi", "--device", "cpu", "--dtype", "float32", "--cpu-kernels", "m7b"
    )
    assert result.code == 4 and "bfloat16" in result.stderr


@needs_kernels
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_kv=st.integers(1, 3),
    rep=st.integers(1, 6),
    head_dim=st.integers(1, 40),
    capacity=st.integers(1, 24),
    slot=st.integers(-2, 26),
    mask_bits=st.integers(0, 2**24 - 1),
    mask_len_delta=st.sampled_from([0, 0, 0, -1, 1]),
    pairs_delta=st.sampled_from([0, 0, 0, -1, 1]),
    qkv_delta=st.sampled_from([0, 0, 0, -1, 1]),
    seed=st.integers(0, 2**16),
)
def test_attention_step_on_any_inputs_declines_or_equals_the_reference(
    kernels, n_kv, rep, head_dim, capacity, slot, mask_bits, mask_len_delta, pairs_delta, qkv_delta, seed
) -> None:
    """Fuzz: shapes, slots and masks the caller could get wrong. The kernel either declines (None, caches untouched)
    or gives what the torch reference gives; it never reads or writes past what it was handed."""
    from m7b.runtime.row_kernels import DecodePosition

    n_heads = n_kv * rep
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(1, 1, (n_heads + 2 * n_kv) * head_dim + qkv_delta, generator=gen).to(BF16)
    pairs = torch.rand(max(0, head_dim // 2 + pairs_delta), 2, generator=gen)
    k_cache = torch.randn(1, n_kv, capacity, head_dim, generator=gen).to(BF16)
    v_cache = torch.randn(1, n_kv, capacity, head_dim, generator=gen).to(BF16)
    bits = [(mask_bits >> i) & 1 == 1 for i in range(max(0, capacity + mask_len_delta))]
    mask = torch.tensor([bits], dtype=torch.bool).reshape(1, -1)
    if 0 <= slot < mask.shape[1]:
        mask[0, slot] = True  # the position sees itself, as in decoding
    position = DecodePosition(pairs, k_cache, v_cache, torch.tensor([slot]), mask, (n_heads, n_kv, head_dim))
    before = (k_cache.clone(), v_cache.clone())
    got = kernels.attention_step(qkv, position)
    valid = qkv_delta == 0 and pairs_delta == 0 and mask_len_delta == 0 and 0 <= slot < capacity and head_dim % 2 == 0
    if not valid:
        assert got is None
        assert torch.equal(k_cache, before[0]) and torch.equal(v_cache, before[1])
        return
    assert got is not None
    reference = DecodePosition(pairs, before[0], before[1], torch.tensor([slot]), mask, position.heads)
    want, written = reference_attention(qkv, reference)
    _close(got, want)
    assert torch.equal(k_cache[0, :, slot], written.to(BF16))
    assert torch.equal(v_cache[0, :, slot], qkv.reshape(-1, head_dim)[n_heads + n_kv :])
    others = [s for s in range(capacity) if s != slot]
    assert torch.equal(k_cache[0, :, others], before[0][0, :, others])  # no other slot written
