"""Choosing the next token: greedy, or temperature with nucleus (top-p) sampling from a seeded generator."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from m7b.errors import InvalidInputError


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise InvalidInputError(
                f"temperature must be 0 (greedy) or a positive finite number, found {self.temperature}",
                field="temperature",
            )
        if not 0 < self.top_p <= 1:
            raise InvalidInputError(f"top_p must be in (0, 1], found {self.top_p}", field="top_p")

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def sample(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """The next token id (a 1-element long tensor on logits' device) from logits of shape (vocab,)."""
    if config.temperature == 0:
        return greedy(logits)
    # The largest logit is subtracted first and the division is in float64, so a tiny temperature (1e-40, or
    # 5e-324: 0 in float32) sends the others to -inf and leaves the top one at 0: greedy in the limit, never NaN.
    scaled = logits.double()
    scaled = ((scaled - scaled.max()) / config.temperature).float()
    probs = torch.softmax(scaled.nan_to_num(nan=-math.inf), dim=-1)
    if config.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop = before >= config.top_p
        drop[..., 0] = False  # the top token always stays, even for a top_p that is 0 in float32 (5e-324)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return order.gather(-1, choice)
    return torch.multinomial(probs, 1, generator=generator)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """`torch.argmax(logits, dim=-1, keepdim=True)` of logits (vocab,): the first largest (a NaN counts as the
    largest, as torch's argmax counts it). On float32 (exact for bf16): torch's bf16 argmax is 3x slower on the
    CPU, and its float32 argmax reads one element at a time there: numpy's, on the same memory, is vectorised
    (35 against 10 us a token for a 32,000-token vocabulary; the whole decode step of a small model takes 3 ms)."""
    wide = logits.float()
    if wide.device.type != "cpu" or wide.dim() != 1 or not wide.numel():
        return torch.argmax(wide, dim=-1, keepdim=True)
    return torch.tensor([int(wide.numpy().argmax())], dtype=torch.long)
