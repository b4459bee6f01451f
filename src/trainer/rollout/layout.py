"""The weight layout the decode step reads, and the LoRA factors copied into fixed buffers.

What is shared with the model being trained: the decoder's own modules and base weights, read in
place (no copy of the model). The first engine moves the frozen base weights of each group
(q/k/v, o, gate/up, down) into one buffer with spare rows for the group's LoRA A factors, each
module's weight becoming a slice of it (`_fuse`), so that one GEMM gives a group's base outputs and
its x A^T; values and modules stay as they were. The LoRA factors are
re-read from the live PEFT modules at every `generate` call into small graph-owned buffers, so a rollout always samples from the adapter as it
is at that step. They are cast to the compute dtype: bf16 GEMMs run on the tensor cores, while
PEFT's float32 factors ran as float32 GEMMs that took 2.2 of the 8.6 ms of a Qwen3-4B decode step
(docs/benchmarks.md). The A factors of projections that share an input are stacked (in the base
weights' buffer, above) and their B factors laid out block-diagonally, so each group needs one more
GEMM for its LoRA terms (about 200 MB of buffers for r 32 on Qwen3-4B).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainer.rollout.model import _active_adapters, _projections

PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


@dataclass
class _Group:
    """Projections that read the same input (q/k/v, o, gate/up, down): live base weights, and
    their LoRA factors in two fixed buffers, so that one GEMM pair computes the group's LoRA terms."""

    weights: list[torch.Tensor]
    biases: list[torch.Tensor | None]
    splits: list[int]  # output features of each projection
    a: torch.Tensor | None  # [sum of ranks, in]: the A factors stacked
    b: torch.Tensor | None  # [sum of outputs, sum of ranks]: the B factors x scale, block-diagonal
    fused: torch.Tensor | None = None  # the base weights in one buffer, then `a` when folded (see _fuse)
    folded: bool = False  # `a` is the last rows of `fused`: one GEMM gives the base outputs and x A^T
    cols: list[tuple[int, int]] = field(default_factory=list)  # per projection: its first column in `b`, its rank

    @property
    def kernel_lora(self) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
        """What the decode kernels read for the LoRA terms (trainer.rollout.decode_kernels)."""
        return None if self.a is None else (self.b, self.cols)

    def project(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each projection's base output, and the group's LoRA term (None without adapters)."""
        if self.fused is None:
            base = [F.linear(x, w, b) for w, b in zip(self.weights, self.biases, strict=True)]
            return base, self.lora(x)
        if not self.folded:
            return list(F.linear(x, self.fused).split(self.splits, -1)), self.lora(x)
        *base, xa = F.linear(x, self.fused).split([*self.splits, self.a.shape[0]], -1)
        return base, F.linear(xa, self.b)

    def lora(self, x: torch.Tensor) -> torch.Tensor | None:
        return None if self.a is None else F.linear(F.linear(x, self.a), self.b)


def _fuse(bases: list[Any], extra_rows: int) -> torch.Tensor | None:
    """Move the frozen base weights of projections that share an input (q/k/v, gate/up; o and down
    alone when `extra_rows`) into one buffer with `extra_rows` spare rows after them (for the
    group's LoRA A factors), each module's weight becoming a row slice of it; return the buffer.

    Why: at decode batch sizes a GEMM's time is reading its weights plus a fixed cost per launch;
    one GEMM over q/k/v and the A factors replaces four (and gate/up + A three; o or down + A two),
    144 fewer launches per decode step on Qwen3-4B: a 32 x 512 rollout went from 3.96 to 3.34 s
    (H100, docs/benchmarks.md). The model keeps its modules and values (the
    slices are contiguous, training reads them as before) and no weight is copied twice: each old
    weight tensor is freed once its slice replaces it. Not done for weights that train or
    projections with a bias."""
    if len(bases) + extra_rows < 2 or any(b.bias is not None or b.weight.requires_grad for b in bases):
        return None
    weights = [b.weight for b in bases]
    first = weights[0]
    offsets = _row_offsets([w.shape[0] for w in weights])
    rows = sum(w.shape[0] for w in weights) + extra_rows
    laid_out = getattr(bases[0], "_rollout_fused", None)
    if laid_out is not None and laid_out.shape[0] == rows:
        if [laid_out[i:].data_ptr() for i in offsets] == [w.data_ptr() for w in weights]:
            return laid_out  # done by an earlier engine (or the last rebuild of this one)
    if len({(w.shape[1], w.dtype, w.device) for w in weights}) > 1:
        return None
    fused = torch.zeros((rows, first.shape[1]), dtype=first.dtype, device=first.device)
    with torch.no_grad():
        for base, row in zip(bases, offsets, strict=True):
            part = fused[row : row + base.weight.shape[0]]
            part.copy_(base.weight)
            base.weight.data = part
    bases[0]._rollout_fused = fused
    return fused


def _row_offsets(sizes: list[int]) -> list[int]:
    """Where each projection's rows start in its group's stacked outputs."""
    return [0, *itertools.accumulate(sizes)][:-1]


class _Adapters:
    """The model's projections, with the LoRA factors copied into fixed buffers (see module doc)."""

    def __init__(self, layers: Sequence[Any], dtype: torch.dtype, fuse: bool = True) -> None:
        self.dtype, self.fuse = dtype, fuse
        self.copies: list[tuple[torch.Tensor, float, torch.Tensor]] = []  # (live param, scale, buffer view)
        self.groups = [[self._group(layer, names) for names in PROJECTION_GROUPS] for layer in layers]
        self.signature = self._signature(layers)
        self.refresh()

    def _group(self, layer: Any, names: tuple[str, ...]) -> _Group:
        modules = [_projections(layer)[n] for n in names]
        bases = [m.base_layer if hasattr(m, "lora_A") else m for m in modules]
        splits = [base.weight.shape[0] for base in bases]
        terms = []  # (row offset of the projection's outputs, A, B, scale)
        cols = []  # per projection: its first column in `b`, its rank (its adapters' columns are adjacent)
        for m, row in zip(modules, _row_offsets(splits), strict=True):
            first = sum(t[1].shape[0] for t in terms)
            for name in _active_adapters(m) if hasattr(m, "lora_A") else []:
                terms.append((row, m.lora_A[name].weight, m.lora_B[name].weight, float(m.scaling[name])))
            cols.append((first, sum(t[1].shape[0] for t in terms) - first))
        rank = sum(t[1].shape[0] for t in terms)
        fold = rank > 0 and all(b.weight.dtype == self.dtype for b in bases)
        fused = _fuse(bases, rank if fold else 0) if self.fuse else None
        group = _Group([b.weight for b in bases], [b.bias for b in bases], splits, None, None, fused, cols=cols)
        if terms:
            ref = terms[0][1]
            group.folded = fold and fused is not None
            if group.folded:
                group.a = fused[sum(splits) :]
            else:
                group.a = torch.empty((rank, ref.shape[1]), dtype=self.dtype, device=ref.device)
            group.b = torch.zeros((sum(splits), rank), dtype=self.dtype, device=ref.device)
            col = 0
            for row0, A, B, scale in terms:
                r = A.shape[0]
                self.copies.append((A, 1.0, group.a[col : col + r]))
                self.copies.append((B, scale, group.b[row0 : row0 + B.shape[0], col : col + r]))
                col += r
        return group

    @staticmethod
    def _signature(layers: Sequence[Any]) -> tuple:
        """What the buffers and captured graphs depend on: tensor addresses, shapes, adapter scales."""
        sig: list[Any] = []
        for layer in layers:
            for m in _projections(layer).values():
                base = m.base_layer if hasattr(m, "lora_A") else m
                sig.append((base.weight.data_ptr(), None if base.bias is None else base.bias.data_ptr()))
                if hasattr(m, "lora_A"):
                    for a in _active_adapters(m):
                        A, B = m.lora_A[a].weight, m.lora_B[a].weight
                        sig.append((a, id(A), id(B), tuple(A.shape), tuple(B.shape), float(m.scaling[a])))
        return tuple(sig)

    def refresh(self) -> None:
        with torch.no_grad():
            for src, scale, buf in self.copies:
                buf.copy_(src if scale == 1.0 else src * scale)
