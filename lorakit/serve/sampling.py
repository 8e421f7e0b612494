"""Choosing the next token of each running sequence: greedy, or temperature + top-p sampling
with a per-request seeded generator (OpenAI's ``temperature``, ``top_p``, ``seed``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


# Temperatures below this are greedy (vLLM's _SAMPLING_EPS): dividing logits by a smaller one
# only sharpens the distribution onto the argmax, and near 1e-38 the division underflows.
GREEDY_BELOW = 1e-5
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class SamplingParams:
    """Per-request decoding settings. ``temperature`` below ``GREEDY_BELOW`` (so 0) is greedy
    (argmax); ``stop`` strings end the text before the first occurrence of any of them;
    ``seed`` lies in ``SEED_RANGE``."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not SEED_RANGE[0] <= self.seed <= SEED_RANGE[1]:
            raise ValueError(f"seed must be in [-2**63, 2**64 - 1], got {self.seed}")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for reproducible sampling, else from fresh entropy."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator,
               top: torch.Tensor | None = None) -> int:
    """One token id from ``logits [vocab]`` (float32, finite maximum ``top``, computed if not
    given) under ``params``.

    ``softmax((logits - top) / temperature)``: shifting by the maximum first keeps every
    exponent <= 0, so no temperature in range overflows. Top-p keeps the smallest set of most
    likely tokens whose probability reaches ``top_p`` (the most likely token is always kept).
    """
    if params.greedy:
        return int(logits.argmax())
    probs = torch.softmax((logits - (logits.max() if top is None else top)) / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above
        sorted_probs[before >= params.top_p] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def next_tokens(logits: torch.Tensor, params: list[SamplingParams],
                generators: list[torch.Generator]) -> list[int]:
    """Next token of each row of ``logits [rows, vocab]``; greedy rows share one argmax. A row
    whose maximum is not finite (a NaN, +inf, or nothing but -inf: the model overflowed) gets
    -1, whatever its sampling; that check reuses the argmax's values, so it costs nothing.

    The argmax runs on the logits' own dtype: widening bf16/fp16 to fp32 is exact and keeps
    the order, so it picks the same token (the first of equal maxima) without converting the
    ``[rows, vocab]`` block; only sampled rows are converted, one row each."""
    top, greedy = logits.max(-1)
    tokens = greedy.masked_fill_(~torch.isfinite(top), -1).tolist()
    return [tok if p.greedy or tok < 0 else sample_row(logits[i].float(), p, generators[i], top[i].float())
            for i, (p, tok) in enumerate(zip(params, tokens))]
