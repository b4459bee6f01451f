"""RolloutEngine: samples completions for a batch of prompts from the live (LoRA) model; see the
package doc (trainer.rollout) for why and how. This module holds the engine's setup and its loop:
the constructor (model handles, switches), `generate`, and the (re)allocation of the state and
weight layout when the batch, the lengths or the weights change. The forward pass is
trainer.rollout.forward, the prefill / decode step / CUDA graphs trainer.rollout.decode."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch

from trainer.rollout import decode_kernels
from trainer.rollout.decode import _DecodeLoop
from trainer.rollout.forward import _ForwardPass
from trainer.rollout.glue import _add_norm, _qkv, _rms_norm, _silu_mul, _softmax
from trainer.rollout.layout import _Adapters
from trainer.rollout.model import causal_lm, unsupported_reason
from trainer.rollout.sampling import Rollout, Sampling, choose_tokens
from trainer.rollout.state import _State

KV_BUCKET = 128  # decode graphs attend over a multiple of this many cache slots, not the whole cache
PROMPT_ALIGN = 16  # prompts are left-padded to a multiple of this (stable shapes for the prefill)
DONE_CHECK_EVERY = 64  # tokens between checks whether every row has finished (a host sync)
# torch.compile variants allowed per glue function: the decode step compiles one per (rows, cache
# bucket) it meets, 32 buckets at 4,096 slots on the compiled-glue path; dynamo's default (8, meant
# for training code) raised under fullgraph=True once a run met more shapes than that.
RECOMPILE_LIMIT = 256


class RolloutEngine(_ForwardPass, _DecodeLoop):
    """Samples completions for a batch of prompts from `model` (a PEFT or plain CausalLM).

    Keep one engine per model: the cache and graphs are allocated on the first `generate` and
    reused while the batch size and lengths fit; they are rebuilt if the weights move.
    """

    def __init__(
        self,
        model: Any,
        *,
        eos_token_ids: Sequence[int],
        pad_token_id: int,
        cuda_graphs: bool | None = None,
        compile: bool | None = None,  # noqa: A002  (the torch.compile switch; keyword only)
        fuse: bool = True,
        kernels: bool | None = None,
    ) -> None:
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"the fast rollout engine cannot run this model: {reason}")
        self.lm = causal_lm(model)
        self.decoder = self.lm.get_decoder()
        self.layers = list(self.decoder.layers)
        self.lm_head = self.lm.get_output_embeddings()
        emb = self.decoder.get_input_embeddings()
        self.device, self.dtype = emb.weight.device, emb.weight.dtype
        cfg = self.lm.config
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eos = torch.tensor(list(eos_token_ids), device=self.device)
        self.pad = int(pad_token_id)
        on_cuda = self.device.type == "cuda"
        self.cuda_graphs = on_cuda if cuda_graphs is None else cuda_graphs
        self.fuse = fuse  # lay base weights (and LoRA A) out for one GEMM per group (_fuse); off: for A/B timing
        # The decode step's Triton kernels (trainer.rollout.decode_kernels); off: compiled glue + cuBLAS, for A/B timing.
        heads = (self.n_heads, self.n_kv, self.head_dim)
        self.kernels = decode_kernels.available(self.device, self.dtype, heads) if kernels is None else kernels
        use_compile = on_cuda if compile is None else compile
        if use_compile:  # process-wide, only ever raised: see RECOMPILE_LIMIT
            dynamo = torch._dynamo.config
            dynamo.recompile_limit = max(dynamo.recompile_limit, RECOMPILE_LIMIT)
            dynamo.accumulated_recompile_limit = max(dynamo.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)
        wrap = (lambda f: torch.compile(f, dynamic=False, fullgraph=True)) if use_compile else (lambda f: f)
        self._wrap = wrap
        self._fused = tuple(map(wrap, (_rms_norm, _add_norm, _qkv, _silu_mul)))
        self._softmax = wrap(_softmax)
        # "matmul": two batched GEMMs and a compiled softmax; measured 2% faster per rollout than
        # "sdpa" (cuDNN) on the GRPO benchmark (H100, 32 x 512 tokens, docs/benchmarks.md).
        self.decode_attention = "matmul"
        self._choose: Any = None
        self.state: _State | None = None
        self.adapters: _Adapters | None = None
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}  # None: capture failed, run eagerly
        self._pool = None
        self.sampling: Sampling | None = None
        self._kernel_path = False
        self._kernel_sampler = False

    # -- public -------------------------------------------------------------------------------

    @torch.no_grad()
    def generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling) -> Rollout:
        """Completions (token ids and their log-probabilities, up to EOS) for each prompt's ids."""
        # CUDA streams, graph pools, Triton launches and the tile searches' tensors go to the current
        # device; under DDP that must be this process's GPU, the model's, whichever was current before.
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext()
        with on_device:
            return self._generate(prompt_ids, max_new_tokens, sampling)

    def _generate(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, sampling: Sampling) -> Rollout:
        batch = len(prompt_ids)
        p_pad = _round_up(max(len(p) for p in prompt_ids), PROMPT_ALIGN)
        slots = _round_up(p_pad + max_new_tokens, KV_BUCKET)
        self._prepare(batch, slots, max_new_tokens, sampling)
        st = self.state
        n = self._prefill(prompt_ids, p_pad)
        st.seed.fill_(int(torch.randint(0, 2**31 - 1, (1,))))  # torch's generator: reproducible under manual_seed
        t = 1
        while t < max_new_tokens:
            # This step writes slot p_pad + t - 1. The attention kernel reads only the live slots,
            # so one graph serves every step; otherwise one per bucket of 128 slots.
            bucket = st.slots if self._kernel_path else _round_up(p_pad + t, KV_BUCKET)
            # Not for the last token: capturing warms up with two steps, and the second would write
            # past the end of the output (one column beyond max_new_tokens) where a new bucket first
            # appears at the last step (p_pad + max_new_tokens = 2 mod 128); that step runs eagerly.
            last = t + 1 == max_new_tokens
            graph = self._graph(bucket) if self.cuda_graphs and not last else None
            if graph is not None:
                graph.replay()
            else:
                self._decode_step(bucket)
            t += 1
            if t % DONE_CHECK_EVERY == 0 and bool(st.finished.all()):
                break
        return self._collect(t, n)

    # -- setup --------------------------------------------------------------------------------

    def _prepare(self, batch: int, slots: int, new_tokens: int, sampling: Sampling) -> None:
        sig = _Adapters._signature(self.layers)
        st = self.state
        if (
            st is not None
            and self.adapters is not None
            and sig == self.adapters.signature
            and st.tok.shape[0] == batch
            and st.slots >= slots
            and st.out.shape[1] >= new_tokens
            and sampling == self.sampling
        ):
            self.adapters.refresh()
            return
        if st is not None and st.tok.shape[0] == batch:
            slots, new_tokens = max(slots, st.slots), max(new_tokens, st.out.shape[1])
        self._drop_graphs()
        self.state = st = None  # free the old cache before allocating the new one
        self.adapters = _Adapters(self.layers, self.dtype, self.fuse)
        # The kernels read each group's outputs (and x A^T) from one GEMM: every group fused (and folded).
        self._kernel_path = self.kernels and all(
            g.fused is not None and (g.a is None or g.folded) for layer in self.adapters.groups for g in layer
        )
        self._kernel_sampler = self._kernel_path and decode_kernels.samples_here(sampling)
        self.state = self._allocate(batch, slots, new_tokens)
        self.sampling = sampling

        def choose(logits: torch.Tensor, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            return choose_tokens(logits, sampling, noise)

        self._choose = self._wrap(choose)

    def _allocate(self, batch: int, slots: int, new_tokens: int) -> _State:
        kv = (2, batch, self.n_kv, slots, self.head_dim)
        dev, long = self.device, torch.long
        # Zeros, not empty: masked slots are still multiplied by zero weights, and must be finite.
        return _State(
            kv=[torch.zeros(kv, dtype=self.dtype, device=dev) for _ in self.layers],
            tok=torch.zeros(batch, dtype=long, device=dev),
            pos=torch.zeros(batch, dtype=long, device=dev),
            start=torch.zeros(batch, dtype=long, device=dev),
            slot=torch.zeros(1, dtype=long, device=dev),
            t=torch.zeros(1, dtype=long, device=dev),
            finished=torch.zeros(batch, dtype=torch.bool, device=dev),
            seed=torch.zeros(1, dtype=long, device=dev),
            out=torch.full((batch, new_tokens), self.pad, dtype=long, device=dev),
            out_logp=torch.zeros((batch, new_tokens), dtype=torch.float32, device=dev),
            arange=torch.arange(slots, device=dev),
        )


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m
