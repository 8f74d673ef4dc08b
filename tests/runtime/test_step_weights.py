"""The whole decode step in one kernel call: its weights gathered once (`step_weights.gather_step`), the witness that
says when to gather them again, and the kernels' per-call check of each tensor's memory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from m7b.runtime import row_kernels
from m7b.runtime.loader import Runtime, load_runtime
from m7b.runtime.model import Transformer
from m7b.runtime.smoke import synthetic_ids, teacher_forced_logits
from m7b.runtime.step_weights import gather_step

BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory):
    from m7b.runtime.cpu_kernels_build import choose_kernels

    choice = choose_kernels("auto", torch.zeros(1, dtype=BF16), tmp_path_factory.mktemp("kernels"))
    if choice.kernels is None:
        pytest.skip(f"m7b's CPU kernels do not run here: {choice.note}")
    return choice.kernels


class _PerBlock:
    """The kernels without the whole-step call."""

    def __init__(self, kernels) -> None:
        self.kernels = kernels

    def __getattr__(self, name: str):
        return getattr(self.kernels, name)

    def __call__(self, x, weight):
        return self.kernels(x, weight)

    def decode_step(self, *args):
        return None


class _Counted(_PerBlock):
    def __init__(self, kernels) -> None:
        super().__init__(kernels)
        self.whole = 0

    def decode_step(self, *args):
        logits = self.kernels.decode_step(*args)
        self.whole += logits is not None
        return logits


def _logits(model: Transformer, step, n: int = 10) -> torch.Tensor:
    ids = synthetic_ids(n, model.args.vocab_size, 3, torch.device("cpu"))
    with torch.inference_mode():
        return teacher_forced_logits(model, ids, 4, step)


@pytest.fixture(params=["dense", "moe"])
def runtime(request, tiny_release_src: Path, mixtral_tiny_src: Path) -> Runtime:
    rt = load_runtime(tiny_release_src if request.param == "dense" else mixtral_tiny_src, torch.device("cpu"), BF16)
    rt.model.setup_caches(1, 16)
    return rt


def _replace_weight(model: Transformer) -> None:
    """A new Parameter of other values in the last layer's last feed-forward (every expert's, for a Mixtral)."""
    feed_forward = model.blocks[-1].feed_forward
    for module in feed_forward.modules():
        if isinstance(module, nn.Linear) and module.weight.shape[0] == model.args.dim:  # w2: (dim, hidden)
            module.weight = nn.Parameter(module.weight.detach() * -2, requires_grad=False)


def _replace_module(model: Transformer) -> None:
    old = model.blocks[0].attention.wo
    new = nn.Linear(old.in_features, old.out_features, bias=False, dtype=BF16)
    with torch.no_grad():
        new.weight.copy_(old.weight.flip(0))
    model.blocks[0].attention.wo = new.requires_grad_(False)


def _new_caches(model: Transformer) -> None:
    model.setup_caches(1, 16)


def _move_memory(model: Transformer) -> None:
    weight = model.blocks[0].attention.wq.weight
    weight.data = (weight.data.float() * 3).to(BF16)  # the same tensor, other memory, other values


@pytest.mark.parametrize(
    ("change", "gathers"),
    [(_replace_weight, 2), (_replace_module, 2), (_new_caches, 2), (_move_memory, 1)],
    ids=["weight", "module", "caches", "memory"],
)
def test_the_whole_step_reads_the_model_as_it_is_after_a_change(
    kernels, runtime: Runtime, monkeypatch: pytest.MonkeyPatch, change: Callable[[Transformer], None], gathers: int
) -> None:
    """Kept between tokens, the step's weights follow every change a user can make to the model: a weight,
    module or cache replaced breaks the witness (the step is gathered again); memory replaced under the same tensor
    is seen by the kernels' pointer check. Each time the whole step gives the bits of the block-by-block path on
    the model as it now is."""
    calls = {"gather": 0}

    def counted(model: Transformer):
        calls["gather"] += 1
        return gather_step(model)

    monkeypatch.setattr(row_kernels, "gather_step", counted)
    counted_kernels = _Counted(kernels)
    step = row_kernels.row_kernel_step(counted_kernels)
    model = runtime.model
    before = _logits(model, step)
    old_caches = [b.attention.kv_cache.k_cache for b in model.blocks if b.attention.kv_cache is not None]
    change(model)
    if change is _new_caches:
        for cache in old_caches:
            cache.zero_()
    after = _logits(model, step)
    per_block = _logits(model, row_kernels.row_kernel_step(_PerBlock(kernels)))
    assert counted_kernels.whole == 12 and calls["gather"] == gathers + 1  # the per-block path gathers once too
    assert torch.equal(after, per_block)
    if change is _new_caches:  # the same values, written to the new caches: the old ones are never written again
        assert torch.equal(after, before) and len(old_caches) == len(model.blocks)
        assert not any(c.any() for c in old_caches)
        assert all(b.attention.kv_cache.k_cache.any() for b in model.blocks if b.attention.kv_cache is not None)
    else:
        assert not torch.equal(after, before)


def test_the_witness_breaks_on_each_kind_of_change(runtime: Runtime) -> None:
    model = runtime.model
    step = gather_step(model)
    assert step is not None and step.holds(model)
    twin = Transformer(model.args)  # another model: the witness is of one
    assert not step.holds(twin)

    def broken(change: Callable[[], object], undo: Callable[[], object] = lambda: None) -> bool:
        fresh = gather_step(model)
        assert fresh is not None and fresh.holds(model)
        change()
        seen = not fresh.holds(model)
        undo()
        return seen

    norm = model.blocks[1].attention_norm
    assert broken(lambda: setattr(norm, "eps", norm.eps + 0.0))  # the same value, another object: gathered again
    assert broken(lambda: model.layers.append(model.layers[0]))
    assert broken(lambda: delattr(model.layers, str(len(model.layers) - 1)))
    assert broken(lambda: setattr(model.norm, "weight", nn.Parameter(model.norm.weight.detach().clone())))
    feed_forward, name = model.blocks[0].feed_forward, "w1" if runtime.args.moe is None else "gate"
    kept = getattr(feed_forward, name)
    assert broken(lambda: setattr(feed_forward, name, nn.Identity()), lambda: setattr(feed_forward, name, kept))
    output = model.output
    assert broken(lambda: setattr(model, "output", nn.Linear(1, 1)), lambda: setattr(model, "output", output))
    assert broken(lambda: setattr(norm, "eps", 1e-3))


def test_models_a_whole_step_cannot_take_are_declined_and_decode_block_by_block(kernels, runtime: Runtime) -> None:
    """No caches, caches of another dtype, blocks of different eps: no whole step (gathered None, or declined by the
    kernels with nothing touched), and the decode step still gives the per-block bits."""
    model = runtime.model
    model.setup_caches(1, 16, cache_dtype=torch.float32)
    counted = _Counted(kernels)
    wide = _logits(model, row_kernels.row_kernel_step(counted))
    assert counted.whole == 0
    assert torch.equal(wide, _logits(model, row_kernels.row_kernel_step(_PerBlock(kernels))))
    model.setup_caches(1, 16)
    model.blocks[0].attention_norm.eps = model.blocks[0].ffn_norm.eps = 1e-3
    assert gather_step(model) is None
    counted = _Counted(kernels)
    assert torch.equal(
        _logits(model, row_kernels.row_kernel_step(counted)),
        _logits(model, row_kernels.row_kernel_step(_PerBlock(kernels))),
    )
    assert counted.whole == 0
    model.blocks[0].attention.kv_cache = None
    assert gather_step(model) is None


# --- several greedy tokens in one call --------------------------------------------------------------------------


class _TokenByToken:
    """The same step without its `greedy` run: `generate` decodes token by token."""

    def __init__(self, step) -> None:
        self.step = step

    def __call__(self, model, token, input_pos):
        return self.step(model, token, input_pos)


@pytest.mark.parametrize("eos_at", [None, 5])
def test_a_greedy_run_generates_the_tokens_of_the_token_by_token_step(
    kernels, runtime: Runtime, eos_at: int | None
) -> None:
    """Greedy runs of several tokens in one kernel call give the tokens, in the order `on_token` sees them, of the
    step called token by token (which gives the per-block path's logits: above); an end-of-sequence id stops the
    run right after it, and max_tokens holds."""
    from m7b.runtime.generate import GenerationConfig, generate

    step = row_kernels.row_kernel_step(kernels)
    model, prompt = runtime.model, [1, 22557, 1055, 28747]
    free = generate(model, prompt, GenerationConfig(max_tokens=40, stop_at_eos=False), decode_fn=_TokenByToken(step))
    eos = free.tokens[eos_at] if eos_at is not None else None
    config = GenerationConfig(max_tokens=40, stop_at_eos=eos is not None)
    seen: list[list[int]] = [[], []]
    lengths: list[int] = []
    greedy = step.greedy

    def counted(model, token, position, n, eos):
        lengths.append(n)
        return greedy(model, token, position, n, eos)

    step.greedy = counted  # type: ignore[method-assign]
    runs = generate(model, prompt, config, eos, seen[0].append, decode_fn=step)
    assert lengths[0] == 1 and max(lengths) > 2 and sum(lengths) >= len(runs.tokens) - 1  # runs that grow
    token_by_token = generate(model, prompt, config, eos, seen[1].append, decode_fn=_TokenByToken(step))
    assert runs.tokens == token_by_token.tokens == seen[0] == seen[1]
    assert runs.stop_reason == token_by_token.stop_reason
    if eos is None:
        assert runs.tokens == free.tokens and len(runs.tokens) == 40
    else:
        assert runs.tokens == free.tokens[: free.tokens.index(eos) + 1] and runs.stop_reason == "eos"


def test_a_greedy_run_declines_a_token_or_position_out_of_range_and_touches_nothing(kernels, runtime: Runtime) -> None:
    model = runtime.model
    step = gather_step(model)
    assert step is not None
    slots, caches = model.slot_pos.clone(), [b.attention.kv_cache.k_cache.clone() for b in model.blocks]
    vocab, positions = model.args.vocab_size, model.freqs.shape[0]
    for token, position in ((vocab, 0), (-1, 0), (1, positions), (1, -1)):
        assert kernels.decode_greedy(step, token, position, 4, -1) is None
        assert kernels.decode_step(step, torch.tensor([[token]]), torch.tensor([position])) is None
    assert torch.equal(model.slot_pos, slots)
    assert all(torch.equal(b.attention.kv_cache.k_cache, c) for b, c in zip(model.blocks, caches, strict=True))
    ran = kernels.decode_greedy(step, 1, positions - 2, 8, -1)  # two positions left: two tokens
    assert ran is not None and len(ran) == 2


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(
        st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.sampled_from([0.0, -0.0, 1.0])),
        min_size=1,
        max_size=64,
    )
)
def test_the_runs_greedy_pick_is_torch_argmax(kernels, values: list[float]) -> None:
    """The first largest, ties and NaN (counted as the largest) included: what `sampling.greedy` picks."""
    logits = torch.tensor(values).to(BF16)
    assert kernels.argmax(logits) == torch.argmax(logits.float()).item()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    slot_pos=st.lists(st.integers(-1, 3000), min_size=1, max_size=48),
    pos=st.integers(0, 3000),
    window=st.integers(1, 4096),
)
def test_the_whole_steps_mask_is_the_models_band(kernels, slot_pos: list[int], pos: int, window: int) -> None:
    from m7b.runtime.attention import band_mask

    slots = torch.tensor(slot_pos, dtype=torch.long)
    want = band_mask(torch.tensor([pos]), slots, window)[0]
    assert torch.equal(kernels.position_mask(slots, pos, window), want)
