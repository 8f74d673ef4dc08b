"""The mixture of experts (Mixtral) against transformers' MixtralForCausalLM on the same weights, its routing rule,
the three ways it runs (eager loop, stacked-and-gathered, CPU row kernels), and full attention's cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from m7b.errors import InvalidInputError
from m7b.runtime.generate import GenerationConfig, generate
from m7b.runtime.hf_twin import hf_model
from m7b.runtime.loader import Runtime, load_runtime
from m7b.runtime.model import Transformer
from m7b.runtime.moe import MoeFeedForward, stack_all_experts
from m7b.runtime.weights import load_state_dict

TOL = 1e-4


@pytest.fixture(scope="module")
def moe_runtime(mixtral_tiny_src: Path) -> Runtime:
    return load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def moe_state(mixtral_tiny_src: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(mixtral_tiny_src)[0]


@pytest.fixture(scope="module")
def hf_moe(moe_runtime: Runtime, moe_state: dict[str, torch.Tensor]):
    return hf_model(moe_state, moe_runtime.args, torch.float32)


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    ids = torch.randint(3, 32000, (1, n), generator=torch.Generator().manual_seed(seed))
    ids[0, 0] = 1
    return ids


def _logits(model: Transformer, ids: torch.Tensor, chunk: int, capacity: int | None = None) -> torch.Tensor:
    n = ids.shape[1]
    model.setup_caches(1, n, capacity)
    with torch.inference_mode():
        return torch.cat(
            [model(ids[:, b : b + chunk], torch.arange(b, min(b + chunk, n)))[0] for b in range(0, n, chunk)]
        )


def test_the_release_is_a_mixture_of_experts_with_full_attention(moe_runtime: Runtime) -> None:
    args = moe_runtime.args
    assert args.moe is not None and (args.moe.num_experts, args.moe.num_experts_per_tok) == (4, 2)
    assert args.sliding_window is None and args.rope_theta == 1e6
    ffn = moe_runtime.model.blocks[0].feed_forward
    assert isinstance(ffn, MoeFeedForward)
    # module names are the checkpoint's keys: load_state_dict needed no mapping
    keys = set(moe_runtime.model.state_dict())
    assert "layers.0.feed_forward.gate.weight" in keys and "layers.1.feed_forward.experts.3.w2.weight" in keys


@pytest.mark.parametrize("chunk", [80, 16, 7])
def test_float32_logits_match_transformers_mixtral(moe_runtime, hf_moe, chunk) -> None:
    ids = _ids(80)
    with torch.inference_mode():
        ref = hf_moe(ids).logits[0]
    ours = _logits(moe_runtime.model, ids, chunk)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() <= TOL


def test_bfloat16_logits_within_2_percent_of_the_largest(mixtral_tiny_src, moe_state) -> None:
    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.bfloat16)
    hf = hf_model(moe_state, rt.args, torch.bfloat16)
    ids = _ids(64, seed=3)
    with torch.inference_mode():
        ref = hf(ids).logits[0].float()
    ours = _logits(rt.model, ids, 64).float()
    assert (ours - ref).abs().max().item() <= 0.02 * ref.abs().max().item()


def test_greedy_decode_matches_transformers_generate(moe_runtime, hf_moe) -> None:
    prompt = _ids(20, seed=1)
    result = generate(moe_runtime.model, prompt[0].tolist(), GenerationConfig(max_tokens=24, stop_at_eos=False))
    with torch.inference_mode():
        theirs = hf_moe.generate(prompt, max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
    assert result.tokens == theirs[0, 20:].tolist()
    # full attention: the cache holds every position of the run, not a window
    assert moe_runtime.model.capacity == moe_runtime.model.max_seq_len >= 20 + 24


def test_routing_is_mistral_inferences_rule_and_runs_only_the_chosen_experts(moe_runtime) -> None:
    ffn = moe_runtime.model.blocks[0].feed_forward
    assert isinstance(ffn, MoeFeedForward)
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0))
    logits = ffn.gate(x)
    top, chosen = torch.topk(logits, 2, dim=-1)
    weights = F.softmax(top.float(), dim=-1)
    # transformers' order (softmax over all, top-k, renormalise) picks the same experts with the same weights
    probs = F.softmax(logits.float(), dim=-1)
    hf_top, hf_chosen = torch.topk(probs, 2, dim=-1)
    assert torch.equal(hf_chosen, chosen)
    assert torch.allclose(hf_top / hf_top.sum(-1, keepdim=True), weights, atol=1e-6)
    want = torch.stack([sum(weights[t, j] * ffn.expert(int(chosen[t, j]))(x[t]) for j in range(2)) for t in range(5)])
    called: list[int] = []
    hooks = [
        ffn.experts[e].register_forward_hook(lambda m, i, o, e=e: called.append(e)) for e in range(ffn.num_experts)
    ]
    try:
        with torch.inference_mode():
            got = ffn(x.view(1, 5, 64))[0]
    finally:
        for h in hooks:
            h.remove()
    assert torch.allclose(got, want, atol=1e-5)
    assert set(called) == set(chosen.flatten().tolist())  # an expert no row chose never ran


def test_routing_is_deterministic(moe_runtime) -> None:
    ids = _ids(40, seed=7)
    first = _logits(moe_runtime.model, ids, 40)
    again = _logits(moe_runtime.model, ids, 40)
    assert torch.equal(first, again)


def test_stacked_experts_gathered_by_index_equal_the_loop(mixtral_tiny_src) -> None:
    """gpt-fast's compiled-step form (weights stacked at load, the chosen experts gathered), run eagerly on the CPU."""
    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.float32)
    ids = _ids(24, seed=2)
    ref = _logits(rt.model, ids, 1)  # decode steps through the loop
    keys = set(rt.model.state_dict())
    stack_all_experts(list(rt.model.layers))
    ffn = rt.model.blocks[0].feed_forward
    assert isinstance(ffn, MoeFeedForward) and ffn.stacked and ffn.w13.shape == (4, 256, 64)
    # the experts' weights are views of the stacked ones: no second copy, same keys
    assert ffn.expert(2).w3.weight.data_ptr() == ffn.w13[2, 128:].data_ptr()
    assert set(rt.model.state_dict()) == keys
    assert (_logits(rt.model, ids, 1) - ref).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_the_compiled_decode_step_runs_a_mixture_of_experts_on_the_cpu(mixtral_tiny_src, tmp_path) -> None:
    from m7b.runtime.fast_decode import prepare_decode

    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.float32)
    prompt = _ids(12, seed=4)[0].tolist()
    config = GenerationConfig(max_tokens=8, stop_at_eos=False)
    eager = generate(rt.model, prompt, config).tokens
    stack_all_experts(list(rt.model.layers))
    prepared = prepare_decode(rt.model, "compile", len(prompt) + 8, tmp_path / "compile", "torch")
    compiled = generate(rt.model, prompt, config, decode_fn=prepared.fn, max_seq_len=prepared.max_seq_len).tokens
    assert prepared.mode == "compile" and compiled == eager


def _bf16_kernels(rt: Runtime):
    from m7b.runtime.cpu_kernels_build import choose_kernels

    choice = choose_kernels("auto", rt.model.output.weight, None)
    if choice.kernels is None:
        pytest.skip(f"m7b's CPU kernels do not run here: {choice.note}")
    return choice.kernels


def _decode_logits(model: Transformer, step, ids: torch.Tensor) -> torch.Tensor:
    """The logits of one decode step (`step`) after a prefill of `ids`, on fresh caches."""
    n = ids.shape[1]
    model.setup_caches(1, n + 1)
    with torch.inference_mode():
        model(ids, torch.arange(n))
        return step(model, torch.tensor([[42]]), torch.tensor([n]))


def test_the_moe_step_in_one_call_equals_one_call_per_block_and_the_per_operation_path(mixtral_tiny_src) -> None:
    """The whole Mixtral decode step as one C call, one C call per block (attention, gate, top-k, softmax, the
    chosen experts), and the per-operation row-kernel path (the routing in torch) give the same bits at every
    position, and agree with the eager model."""
    from m7b.runtime.row_kernels import row_kernel_step
    from m7b.runtime.smoke import teacher_forced_logits

    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.bfloat16)
    kernels = _bf16_kernels(rt)
    calls: dict[str, int] = {"step": 0, "block": 0}

    class Counted:
        def __getattr__(self, name):
            return getattr(kernels, name)

        def __call__(self, x, weight):
            return kernels(x, weight)

        def decode_step(self, *args):
            logits = kernels.decode_step(*args)
            calls["step"] += logits is not None
            return logits

        def moe_block_step(self, *args):
            chosen = kernels.moe_block_step(*args)
            calls["block"] += chosen is not None
            return chosen

    class PerBlock(Counted):
        def decode_step(self, *args):
            return None

    class PerOperation(PerBlock):
        def moe_block_step(self, *args):
            return None

    ids = _ids(12, seed=5)
    rt.model.setup_caches(1, 12)
    paths = {}
    for name, kind in (("step", Counted), ("block", PerBlock), ("operation", PerOperation)):
        paths[name] = teacher_forced_logits(rt.model, ids, 4, row_kernel_step(kind()))  # type: ignore[arg-type]
    eager = teacher_forced_logits(rt.model, ids, 4, lambda m, t, p: m(t, p)[:, -1])
    decoded = ids.shape[1] - 4
    assert calls == {"step": decoded, "block": decoded * len(rt.model.blocks)}
    assert torch.equal(paths["step"], paths["block"]) and torch.equal(paths["block"], paths["operation"])
    top = eager.float().abs().max().item()
    assert (paths["step"].float() - eager.float()).abs().max().item() <= 0.02 * top


def test_the_moe_block_call_reads_only_the_chosen_experts(mixtral_tiny_src) -> None:
    """Experts the gate did not choose are never read: filled with NaN they change nothing; the experts the call
    reports are torch's top-k of the same gate logits."""
    from m7b.runtime.row_kernels import attention_on_rows, decode_position, rms_norm_on_rows

    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.bfloat16)
    kernels = _bf16_kernels(rt)
    model = rt.model
    block = model.blocks[0]
    f, a = block.feed_forward, block.attention
    assert isinstance(f, MoeFeedForward)
    x = model.tok_embeddings(torch.tensor([[42]])).clone()
    norms = (block.attention_norm.weight, block.ffn_norm.weight)
    attention = (a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight)
    experts = tuple((f.expert(e).w1.weight, f.expert(e).w3.weight, f.expert(e).w2.weight) for e in range(4))

    def run(experts):
        model.setup_caches(1, 4)
        freqs, mask, slots = model.positions(torch.tensor([0]))
        row = x.clone()
        position = decode_position(a, freqs, slots, mask)
        chosen = kernels.moe_block_step(row, norms, 1e-5, attention, f.gate.weight, experts, 2, position)
        return row, chosen

    with torch.inference_mode():
        row, chosen = run(experts)
        model.setup_caches(1, 4)
        freqs, mask, slots = model.positions(torch.tensor([0]))
        h = x + attention_on_rows(kernels, a, rms_norm_on_rows(kernels, block.attention_norm, x), freqs, mask, slots)
        _, want = torch.topk(kernels(rms_norm_on_rows(kernels, block.ffn_norm, h), f.gate.weight), 2, dim=-1)
    assert chosen == want.reshape(-1).tolist()
    poisoned = tuple(
        e if i in chosen else tuple(torch.full_like(w, float("nan")) for w in e) for i, e in enumerate(experts)
    )
    again, chosen_again = run(poisoned)
    assert chosen_again == chosen and torch.equal(again, row) and not again.isnan().any()


def test_the_moe_block_call_reads_a_moved_expert_from_where_it_is_now(mixtral_tiny_src) -> None:
    """The block call keeps its check of a block's weights (and their pointer arrays) between steps; a weight whose
    memory is replaced in place (`param.data = ...`: the same tensor, other memory) is read from its new memory, as a
    call with fresh tensors of the same values reads it, never from the memory the check saw."""
    from m7b.runtime.row_kernels import decode_position

    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.bfloat16)
    kernels = _bf16_kernels(rt)
    model = rt.model
    block = model.blocks[0]
    f, a = block.feed_forward, block.attention
    x = model.tok_embeddings(torch.tensor([[42]])).clone()
    norms = (block.attention_norm.weight, block.ffn_norm.weight)

    def run(attention, experts):
        model.setup_caches(1, 4)
        freqs, mask, slots = model.positions(torch.tensor([0]))
        row = x.clone()
        chosen = kernels.moe_block_step(
            row, norms, 1e-5, attention, f.gate.weight, experts, 2, decode_position(a, freqs, slots, mask)
        )
        return row, chosen

    with torch.inference_mode():
        gate, experts = f.row_weights()
        attention = (a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight)
        before, chosen = run(attention, experts)
        assert chosen is not None and torch.equal(run(attention, experts)[0], before)  # the kept check, same result
        for w in (a.wo.weight, *(w for e in chosen for w in experts[e])):
            w.data = (w.data.float() * -1.5).to(torch.bfloat16)  # other memory, other values
        moved, chosen_moved = run(attention, experts)
        fresh = tuple(w.clone() for w in attention), tuple(tuple(w.clone() for w in e) for e in experts)
        want, chosen_fresh = run(*fresh)
    assert chosen_moved == chosen_fresh and torch.equal(moved, want) and not torch.equal(moved, before)


def test_the_moe_block_call_declines_what_it_cannot_take_and_touches_nothing(mixtral_tiny_src) -> None:
    from m7b.runtime.row_kernels import decode_position

    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.bfloat16)
    kernels = _bf16_kernels(rt)
    model = rt.model
    block = model.blocks[0]
    f, a = block.feed_forward, block.attention
    model.setup_caches(1, 4)
    freqs, mask, slots = model.positions(torch.tensor([0]))
    position = decode_position(a, freqs, slots, mask)
    x = model.tok_embeddings(torch.tensor([[42]])).clone()
    norms = (block.attention_norm.weight, block.ffn_norm.weight)
    attention = (a.wq.weight, a.wk.weight, a.wv.weight, a.wo.weight)
    experts = tuple((f.expert(e).w1.weight, f.expert(e).w3.weight, f.expert(e).w2.weight) for e in range(4))
    w1, w3, w2 = experts[1]
    cases = {
        "no expert per token": (attention, f.gate.weight, experts, 0),
        "more per token than experts": (attention, f.gate.weight, experts, 5),
        "a gate row short": (attention, f.gate.weight[:3], experts, 2),
        "three attention weights": (attention[:3], f.gate.weight, experts, 2),
        "an expert's w2 transposed": (attention, f.gate.weight, (experts[0], (w1, w3, w2.t()), *experts[2:]), 2),
        "an expert in float32": (attention, f.gate.weight, (experts[0], (w1.float(), w3, w2), *experts[2:]), 2),
        "an expert of another width": (attention, f.gate.weight, (experts[0], (w1[:-1], w3, w2), *experts[2:]), 2),
        "no experts": (attention, f.gate.weight[:0], (), 2),
    }
    for what, (att, gate, exps, k) in cases.items():
        row, caches = x.clone(), (position.k_cache.clone(), position.v_cache.clone())
        assert kernels.moe_block_step(row, norms, 1e-5, att, gate, exps, k, position) is None, what
        assert torch.equal(row, x) and torch.equal(position.k_cache, caches[0]), what
        assert torch.equal(position.v_cache, caches[1]), what


def test_a_smaller_window_gives_a_rolling_cache_equal_to_full_recompute(mixtral_tiny_src) -> None:
    """The smoke battery's window override on a model without one: the rolling cache (capacity W) and the full
    cache under the same band mask give the same logits."""
    args = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.float32).args.with_window(8)
    assert args.rope_theta == 1e6  # the model's own rope_theta, not the windowed default
    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.float32, args_override=args)
    ids = _ids(40, seed=6)
    rolling = _logits(rt.model, ids, 1)
    assert rt.model.capacity == 8
    full = _logits(rt.model, ids, 40, capacity=40)
    assert (rolling - full).abs().max().item() <= 1e-5
    with pytest.raises(InvalidInputError, match="window"):
        rt.args.with_window(1)


def test_the_position_cap_is_params_max_seq_len(moe_runtime) -> None:
    from m7b.runtime.generate import check_positions

    long = replace(moe_runtime.args, max_seq_len=65_536)
    check_positions(1000, 60_000, long.max_positions)  # 8x22B addresses 65,536
    with pytest.raises(InvalidInputError, match="at most 32,768"):
        check_positions(1000, 60_000, moe_runtime.args.max_positions)
    GenerationConfig(max_tokens=40_000).validate(long.max_positions)
    with pytest.raises(InvalidInputError, match="max_tokens"):
        GenerationConfig(max_tokens=40_000).validate(moe_runtime.args.max_positions)


@pytest.mark.slow
def test_smoke_on_a_mixture_of_experts_adds_routing_and_mixtral_parity(cli_inproc, m7b_home, mixtral_tiny_src) -> None:
    import json

    result = cli_inproc("smoke", str(mixtral_tiny_src), "--device", "cpu", "--json")
    assert result.code == 0, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    for name in (
        "routing is deterministic",
        "logits equal transformers' Mixtral",
        "cache holds every position (full attention)",
        "rolling cache equals a full recompute past the window",
        "chunked prefill equals a single pass",
    ):
        assert checks[name]["passed"] is True, checks[name]
    assert "cache memory constant after W tokens" not in checks  # no window: the cache is sized to the run


def test_the_weights_handed_to_the_block_kernel_follow_a_reload_and_stacking(mixtral_tiny_src, moe_state) -> None:
    """The gate and experts `row_weights` keeps between steps are the modules' current ones after the weights are
    replaced (load_state_dict with assign, as the loader does; stack_experts): a kernel never reads a dropped tensor."""
    from m7b.runtime.moe import stack_experts

    rt = load_runtime(mixtral_tiny_src, torch.device("cpu"), torch.float32)
    f = rt.model.blocks[0].feed_forward
    assert isinstance(f, MoeFeedForward)

    def current():
        return [f.gate.weight] + [
            w
            for e in range(f.num_experts)
            for w in (f.expert(e).w1.weight, f.expert(e).w3.weight, f.expert(e).w2.weight)
        ]

    def kept():
        gate, experts = f.row_weights()
        return [gate] + [w for e in experts for w in e]

    assert all(a is b for a, b in zip(kept(), current(), strict=True))
    fresh = {k: v.float().clone() for k, v in moe_state.items()}
    rt.model.load_state_dict(fresh, strict=True, assign=True)
    assert all(a is b for a, b in zip(kept(), current(), strict=True))
    assert kept()[0].data_ptr() == fresh["layers.0.feed_forward.gate.weight"].data_ptr()
    stack_experts(f)
    assert all(a is b for a, b in zip(kept(), current(), strict=True))
