"""How the rollout engine picks each token: the sampling settings, HF's warpers in HF's order
(temperature, top-k, top-p, min-p), the graph-safe draw, and what a rollout returns."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    """How to pick each token; the same fields and meaning as transformers' GenerationConfig."""

    do_sample: bool = True
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float | None = None


@dataclass
class Rollout:
    """Completions truncated after their first EOS (kept), and each token's log-probability under
    the temperature-scaled, unfiltered distribution (what the GRPO loss computes for it)."""

    completion_ids: list[list[int]]
    logprobs: list[list[float]]


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """`logits` (float32, [B, V]) after HF's sampling warpers, in the order `generate` applies them."""
    if s.temperature != 1.0:
        logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.size(-1))).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - s.top_p
        drop[..., -1:] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), -math.inf)
    if s.min_p is not None:
        probs = logits.softmax(-1)
        # The top token always survives (min_p <= 1), as HF's min_tokens_to_keep=1 guarantees.
        logits = logits.masked_fill(probs < s.min_p * probs.amax(-1, keepdim=True), -math.inf)
    return logits


def choose_tokens(logits: torch.Tensor, s: Sampling, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token [B], its log-probability [B]) from float32 logits [B, V].

    Sampling uses the exponential race (argmax of p / E with E ~ Exp(1)), which draws from p
    exactly like `torch.multinomial` but needs no host sync, so it can live inside a CUDA graph.
    """
    if s.do_sample:
        probs = filter_logits(logits, s).softmax(-1)
        token = (probs / noise.clamp_min(1e-20)).argmax(-1)
    else:
        token = logits.argmax(-1)
    scale = s.temperature if s.do_sample else 1.0
    logp = (logits / scale).log_softmax(-1).gather(-1, token[:, None])[:, 0]
    return token, logp
