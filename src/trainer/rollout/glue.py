"""The pointwise glue between the decode step's GEMMs (RMSNorm, residual add, q/k/v split + rotary,
softmax, SwiGLU) as plain torch functions: run eagerly in the prefill, `torch.compile`d in the decode
step off the Triton path, and shared with the training step (trainer.rollout.fast_grpo), so the
sampling and the loss compute them the same way."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # The same operations, in the same dtypes, as Qwen3RMSNorm / LlamaRMSNorm.
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _with_lora(y: torch.Tensor, lora: torch.Tensor | None) -> torch.Tensor:
    return y if lora is None else y + lora


def _add_norm(
    x: torch.Tensor, y: torch.Tensor, lora: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add of a projection's output (base + LoRA), then the next RMSNorm."""
    x = x + _with_lora(y, lora)
    return x, _rms_norm(x, weight, eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _qkv(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lora: torch.Tensor | None,
    splits: list[int],
    qw: torch.Tensor | None,
    kw: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    heads: tuple[int, int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """q/k/v projections [B,T,*] -> q [B,H,T,D] and stacked k, v [2,B,Hkv,T,D], with LoRA added,
    the per-head norm (Qwen3) and the rotary embedding applied."""
    if lora is not None:
        lq, lk, lv = lora.split(splits, -1)
        q, k, v = _with_lora(q, lq), _with_lora(k, lk), _with_lora(v, lv)
    n, n_kv, d = heads
    q, k, v = q.unflatten(-1, (n, d)), k.unflatten(-1, (n_kv, d)), v.unflatten(-1, (n_kv, d))
    if qw is not None:
        q, k = _rms_norm(q, qw, eps), _rms_norm(k, kw, eps)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = cos[:, None], sin[:, None]
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    return q, torch.stack((k, v))


def _softmax(scores: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    return (scores.float() * scale + bias).softmax(-1).to(scores.dtype)


def _silu_mul(g: torch.Tensor, u: torch.Tensor, lora: torch.Tensor | None, splits: list[int]) -> torch.Tensor:
    if lora is not None:
        lg, lu = lora.split(splits, -1)
        g, u = g + lg, u + lu
    return F.silu(g) * u


def _bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, -math.inf)
