"""The smoke check of a quantized model: its teacher-forced logits against the release's own precision.

The bound (`quant_bound`, on the relative RMS error of the logits, ||Δ|| / ||reference|| over every position and
token) is derived from the schemes. A product's relative error from rounding the weights is the rounding step over
√12, relative to the weights' spread: int8 per channel, step max|w| / 127 of a row (≈ 4.1σ for 4,096 Gaussian
weights): 4.1 / (127 √12) ≈ 0.9%; int4, step max|w| / 8 of a group of 32 (≈ 2.1σ): 2.1 / (8 √12) ≈ 7.5%; the
activations' int8 blocks of 32 add ≈ 0.5% in quadrature: ε ≈ 1.05% (int8), 7.5% (int4). Each of the L blocks adds
such an error to the residual stream and the later blocks carry it on, independent from block to block: about
ε √L at the logits. The bound is twice that (capped at 60%, where int4 on a deep random-weight model lands), so a
scheme that works passes and a broken one (a wrong scale, swapped nibbles: errors of order one per product) fails.
Measured on the synthetic releases (tiny, L = 2: int8 1.4-1.7%, int4 14%; bench-cpu, L = 8: 2.7-3.1%, 23%):
docs/runtime.md.
"""

from __future__ import annotations

import math

import torch

from .generate import DecodeFn, decode_one_token
from .model import Transformer
from .smoke import PAST_WINDOW, SmokeCheck, synthetic_ids, teacher_forced_logits

EPSILON = {"int8": 0.0105, "int4": 0.075}  # a product's relative error, derived above
BOUND_CAP = 0.6


def quant_bound(scheme: str, n_layers: int) -> float:
    """The smoke bound on the logits' relative RMS error for `scheme` in a model of `n_layers` blocks."""
    return min(2 * EPSILON[scheme] * math.sqrt(max(1, n_layers)), BOUND_CAP)


def logits_error(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float, float]:
    """(relative RMS error, max |Δ| relative to the largest logit, share of positions whose top token agrees)."""
    diff = (got.float() - want.float()).norm().item()
    rel = diff / max(want.float().norm().item(), 1e-12)
    peak = (got.float() - want.float()).abs().max().item() / max(want.float().abs().max().item(), 1e-12)
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    return rel, peak, agree


@torch.inference_mode()
def check_quantized_logits(
    model: Transformer,
    reference: Transformer,
    scheme: str,
    seed: int,
    fn: DecodeFn = decode_one_token,
    name: str = "eager",
) -> SmokeCheck:
    """`model`'s decode step `fn` (quantized) against `reference`'s eager step, teacher-forced over the positions
    the decode-path check covers (the last 8 before the window and PAST_WINDOW after it)."""
    w = model.window
    prompt_len, total = max(1, w - 8), w + PAST_WINDOW
    ids = synthetic_ids(total, model.args.vocab_size, seed, model.output.weight.device)
    for m in (model, reference):
        if m.max_seq_len < total:
            m.setup_caches(1, total)
    got = teacher_forced_logits(model, ids, prompt_len, fn)
    want = teacher_forced_logits(reference, ids, prompt_len, decode_one_token)
    rel, peak, agree = logits_error(got, want)
    bound = quant_bound(scheme, model.args.n_layers)
    return SmokeCheck(
        f"{scheme} logits ({name} step) near the release's own precision",
        rel <= bound,
        f"positions {prompt_len}-{total - 1} (W={w}), teacher-forced: relative RMS error {rel:.2%} (bound "
        f"{bound:.1%}: 2 x {EPSILON[scheme]:.2%} x sqrt({model.args.n_layers} layers)), max |diff| {peak:.1%} of "
        f"the largest logit, top token agrees at {agree:.0%} of positions",
        rel,
    )


def quantized_checks(
    model: Transformer, reference: Transformer, scheme: str, seed: int, paths: dict[str, DecodeFn]
) -> list[SmokeCheck]:
    """The quantized model's eager step and each fast path (e.g. m7b's quantized CPU kernels) against the release's
    own precision (`reference`: the same release, unquantized)."""
    steps = {"eager": decode_one_token, **paths}
    return [check_quantized_logits(model, reference, scheme, seed, fn, name) for name, fn in steps.items()]
