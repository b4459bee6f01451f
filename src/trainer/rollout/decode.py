"""The decode loop's steps: the prefill, one decode step for every row (reads and writes only the
engine's state, so that it can be a CUDA graph), the graphs captured per KV length, and the outputs
read back. Under greedy decoding the tokens equal `generate`'s (tests/test_rollout.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from trainer.rollout import decode_kernels
from trainer.rollout.glue import _bias
from trainer.rollout.sampling import Rollout, choose_tokens

log = logging.getLogger(__name__)


class _DecodeLoop:
    """RolloutEngine's prefill, decode step and CUDA graphs, kept apart so each part of the engine
    fits on a screen or two.

    Reads the engine's `state`, `sampling`, `pad` and `eos`, its forward pass (`_forward`,
    `_logits`) and the sampler chosen in `_prepare` (`_choose`, `_kernel_sampler`); owns `graphs`
    and their memory pool `_pool`.
    """

    def _prefill(self, prompt_ids: Sequence[Sequence[int]], p_pad: int) -> int:
        st, dev = self.state, self.device
        lengths = torch.tensor([len(p) for p in prompt_ids], device=dev)
        ids = torch.full((len(prompt_ids), p_pad), self.pad, dtype=torch.long)
        for row, p in enumerate(prompt_ids):
            ids[row, p_pad - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        ids = ids.to(dev)
        start = p_pad - lengths
        ar = torch.arange(p_pad, device=dev)
        positions = (ar[None] - start[:, None]).clamp_min(0)
        # Causal over real tokens; a padding row attends to itself only (keeps its softmax finite).
        valid = (ar[None, None] >= start[:, None, None]) & (ar[None, None] <= ar[None, :, None])
        valid |= torch.eye(p_pad, dtype=torch.bool, device=dev)[None]
        bias = _bias(valid[:, None], self.dtype)
        h = self._forward(ids, positions, bias, slice(0, p_pad), p_pad, fused=False)
        logits = self._logits(h).float()
        token, logp = choose_tokens(logits, self.sampling, self._noise(logits))
        st.start.copy_(start)
        st.pos.copy_(lengths)
        st.slot.fill_(p_pad)
        st.t.fill_(1)
        st.out.fill_(self.pad)
        st.out_logp.zero_()
        st.out[:, 0] = token
        st.out_logp[:, 0] = logp
        st.tok.copy_(token)
        st.finished.copy_(torch.isin(token, self.eos))
        return len(prompt_ids)

    def _noise(self, logits: torch.Tensor) -> torch.Tensor | None:
        # Drawn eagerly, outside the compiled sampler: under capture, torch advances its generator per replay.
        return torch.empty_like(logits).exponential_() if self.sampling.do_sample else None

    def _decode_step(self, kv_len: int) -> None:
        """One token for every row; reads and writes only `self.state` (so it can be a graph)."""
        st = self.state
        bias = None  # the attention kernel masks by st.start and st.slot itself
        if not self._kernel_path:
            ar = st.arange[:kv_len]
            valid = (ar[None] >= st.start[:, None]) & (ar[None] <= st.slot)
            bias = _bias(valid[:, None, None], self.dtype)
        h = self._forward(st.tok[:, None], st.pos[:, None], bias, st.slot, kv_len, fused=True)
        logits = self._logits(h, decode_kernels.linear if self._kernel_path else None)
        if self._kernel_sampler:  # reads the logits in their own dtype: no float32 copy
            s = self.sampling
            token, logp = decode_kernels.sample(logits, s.temperature, s.min_p, st.seed, st.t)
        else:
            logits = logits.float()
            token, logp = self._choose(logits, self._noise(logits))
        token = torch.where(st.finished, self.pad, token)
        logp = logp.masked_fill(st.finished, 0.0)
        st.out.index_copy_(1, st.t, token[:, None])
        st.out_logp.index_copy_(1, st.t, logp[:, None])
        st.finished |= (token[:, None] == self.eos).any(-1)
        st.tok.copy_(token)
        st.pos.add_(1)
        st.slot.add_(1)
        st.t.add_(1)

    def _graph(self, kv_len: int) -> torch.cuda.CUDAGraph | None:
        """The decode step for `kv_len` slots as a CUDA graph, captured on first use; None where a
        capture failed (the step then runs eagerly: the same kernels, one launch each)."""
        if kv_len in self.graphs:
            return self.graphs[kv_len]
        st = self.state
        live = (st.tok, st.pos, st.slot, st.t, st.finished, st.out, st.out_logp)
        saved = [x.clone() for x in live]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up: compiles, autotunes, allocates outside the capture
            for _ in range(2):
                self._decode_step(kv_len)
        torch.cuda.current_stream().wait_stream(side)
        for x, y in zip(live, saved, strict=True):
            x.copy_(y)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                self._decode_step(kv_len)
        except RuntimeError as exc:  # e.g. a kernel that syncs, or the allocator refusing the pool
            log.warning(
                "decode step for %d cache slots runs without a CUDA graph (capture failed: %s)",
                kv_len,
                str(exc).splitlines()[0][:200],
            )
            torch.cuda.synchronize()
            for x, y in zip(live, saved, strict=True):  # a failed capture may have run part of the step
                x.copy_(y)
            graph = None
        self.graphs[kv_len] = graph
        log.debug("captured the decode step for %d cache slots", kv_len)
        return graph

    def _drop_graphs(self) -> None:
        """Release the captured graphs and their memory pool. The pool goes with them: once its last
        graph is freed, the caching allocator drops a private pool, and capturing into the stale
        handle again trips its internal assert (`use_count > 0`, seen at the reference recipe's shape,
        where the cache grows between rollouts; vllm-project/vllm#53682 hit the same)."""
        self.graphs.clear()
        self._pool = None

    def _collect(self, steps: int, batch: int) -> Rollout:
        st = self.state
        tokens = st.out[:batch, :steps].cpu()
        logps = st.out_logp[:batch, :steps].cpu()
        eos = set(self.eos.tolist())
        ids_out, lp_out = [], []
        for row, lp in zip(tokens.tolist(), logps.tolist(), strict=True):
            end = next((i + 1 for i, tok in enumerate(row) if tok in eos), len(row))
            ids_out.append(row[:end])
            lp_out.append(lp[:end])
        return Rollout(ids_out, lp_out)
