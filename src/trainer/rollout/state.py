"""The decode step's state: every tensor it reads or writes (KV cache, current tokens and positions,
outputs), at fixed shapes and addresses so that a captured CUDA graph can replay over it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class _State:
    """Every tensor the decode step reads or writes: fixed shapes, fixed addresses."""

    kv: list[torch.Tensor]  # per layer [2, B, Hkv, S, D]: keys, values
    tok: torch.Tensor  # [B] the token being fed
    pos: torch.Tensor  # [B] its position id
    start: torch.Tensor  # [B] first cache slot holding a real (not padding) token
    slot: torch.Tensor  # [1] the cache slot this step writes
    t: torch.Tensor  # [1] the completion index this step produces
    finished: torch.Tensor  # [B] bool
    seed: torch.Tensor  # [1] this rollout's noise seed (decode_kernels.sample)
    out: torch.Tensor  # [B, C] completion tokens
    out_logp: torch.Tensor  # [B, C] float32
    arange: torch.Tensor  # [S]

    @property
    def slots(self) -> int:
        return self.kv[0].shape[3]
