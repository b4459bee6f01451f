"""Fast rollouts for GRPO: a static KV cache and one decode step replayed from a CUDA graph.

Why: a GRPO step is mostly sampling. `transformers.generate` pays Python and launch overhead on
every token (and, in TRL's train-mode path with gradient checkpointing, runs without a KV cache),
so it reaches a small fraction of what the GPU can do. Here the decode step for the whole batch
(every layer, LoRA, sampling, EOS bookkeeping) is captured once in a CUDA graph per KV-length
bucket and replayed per token; all state lives in fixed-shape buffers on the device. On CUDA the
decode step runs through trainer.decode_kernels (Triton: LoRA + norm + rotary + cache write,
live-slot attention, SwiGLU, few-row GEMMs, the sampler), which reads only the live cache slots,
so one graph serves every step; `kernels=False` keeps the compiled-glue path (A/B timing, CPU).

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

Exactness: prompts are left-padded like `generate` does, positions and masks follow its rules, the
sampling filters are HF's warpers in HF's order (temperature, top-k, top-p, min-p), and finished
rows emit the pad token. Under greedy decoding the tokens equal `generate`'s and the per-token
log-probabilities agree to the dtype's rounding (tests/test_rollout.py).

Supported: decoder-only Llama-family layouts (Qwen3, Qwen2, Llama) with plain LoRA adapters.
`unsupported_reason(model)` says why another model is not; callers fall back to `generate`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainer import decode_kernels

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
KV_BUCKET = 128  # decode graphs attend over a multiple of this many cache slots, not the whole cache
PROMPT_ALIGN = 16  # prompts are left-padded to a multiple of this (stable shapes for the prefill)
DONE_CHECK_EVERY = 64  # tokens between checks whether every row has finished (a host sync)
# torch.compile variants allowed per glue function: the decode step compiles one per (rows, cache
# bucket) it meets, 32 buckets at 4,096 slots on the compiled-glue path; dynamo's default (8, meant
# for training code) raised under fullgraph=True once a run met more shapes than that.
RECOMPILE_LIMIT = 256
PROJECTION_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


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


# ---------------------------------------------------------------------------------------------
# The model, as the decode step sees it


def causal_lm(model: Any) -> Any:
    """The transformers CausalLM inside DDP / PEFT wrappers (LoRA layers stay injected in it)."""
    while hasattr(model, "module") and not hasattr(model, "get_decoder"):
        model = model.module
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def unsupported_reason(model: Any) -> str | None:
    """Why the fast path cannot run this model (None: it can)."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {SUPPORTED_MODEL_TYPES}"
    decoder = lm.get_decoder()
    rope_type = getattr(decoder.rotary_emb, "rope_type", "default")
    if "dynamic" in rope_type or rope_type == "longrope":
        return f"rope type {rope_type!r} changes with the sequence length"
    for layer in decoder.layers:
        attn = layer.self_attn
        if getattr(attn, "sliding_window", None):
            return "sliding-window attention"
        for name in ("input_layernorm", "post_attention_layernorm"):
            if not hasattr(getattr(layer, name), "variance_epsilon"):
                return f"{name} is not an RMSNorm"
        if not _is_silu(layer.mlp):
            return "the MLP activation is not SiLU"
        for module in _projections(layer).values():
            reason = _lora_reason(module)
            if reason:
                return reason
    return None


def _projections(layer: Any) -> dict[str, Any]:
    attn, mlp = layer.self_attn, layer.mlp
    return {
        "q_proj": attn.q_proj,
        "k_proj": attn.k_proj,
        "v_proj": attn.v_proj,
        "o_proj": attn.o_proj,
        "gate_proj": mlp.gate_proj,
        "up_proj": mlp.up_proj,
        "down_proj": mlp.down_proj,
    }


def _lora_reason(module: Any) -> str | None:
    base = getattr(module, "base_layer", module)
    if not torch.is_floating_point(getattr(base, "weight", torch.empty(0, dtype=torch.uint8))):
        return f"the base weights of {type(base).__name__} are quantized (4-bit / 8-bit), not floating point"
    if not hasattr(module, "lora_A"):
        return None if isinstance(module, torch.nn.Linear) else f"{type(module).__name__} is not a Linear"
    for name in _active_adapters(module):
        if name in getattr(module, "lora_variant", {}) or getattr(module, "use_dora", {}).get(name):
            return "a LoRA variant (DoRA, ...) is active"
        if module.lora_B[name].bias is not None:
            return "LoRA with a bias"
        drop = module.lora_dropout[name]
        if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
            return "LoRA dropout > 0 (generate would sample through dropout; set lora.dropout: 0)"
    return None


def _active_adapters(module: Any) -> list[str]:
    if getattr(module, "disable_adapters", False) or getattr(module, "merged", False):
        return []
    return [a for a in module.active_adapters if a in module.lora_A]


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
        """What the decode kernels read for the LoRA terms (trainer.decode_kernels)."""
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


# ---------------------------------------------------------------------------------------------
# The engine


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


class RolloutEngine:
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
        # The decode step's Triton kernels (trainer.decode_kernels); off: compiled glue + cuBLAS, for A/B timing.
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
            graph = self._graph(bucket) if self.cuda_graphs else None
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

    # -- the forward pass ---------------------------------------------------------------------

    def _forward(
        self, ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, slots: Any, kv_len: int, fused: bool
    ) -> torch.Tensor:
        """Hidden state after the final norm for `ids` [B, T]; writes their K/V at `slots`.

        `slots` is a slice (prefill) or a [1] tensor (decode, so that one graph serves every step);
        attention reads cache slots [0, kv_len) under `bias` [B, 1, T, kv_len]. `fused`: the
        pointwise glue as compiled kernels (decode), else eager (prefill; shapes vary).
        """
        norm, add_norm, qkv, silu_mul = self._fused if fused else (_rms_norm, _add_norm, _qkv, _silu_mul)
        st, groups, heads = self.state, self.adapters.groups, (self.n_heads, self.n_kv, self.head_dim)
        x = self.decoder.get_input_embeddings()(ids)
        cos, sin = self.decoder.rotary_emb(x, positions)
        first = self.layers[0].input_layernorm
        h = norm(x, first.weight, first.variance_epsilon)
        if fused and self._kernel_path:
            return self._decode_kernels(x[:, 0], h[:, 0], cos[:, 0], sin[:, 0], slots)[:, None]
        for i, layer in enumerate(self.layers):
            attn, (g_qkv, g_o, g_gu, g_down) = layer.self_attn, groups[i]
            (q, k, v), lora = g_qkv.project(h)
            qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            q, kv = qkv(
                q,
                k,
                v,
                lora,
                g_qkv.splits,
                None if qn is None else qn.weight,
                None if kn is None else kn.weight,
                0.0 if qn is None else qn.variance_epsilon,
                cos,
                sin,
                heads,
            )
            cache = st.kv[i]
            if isinstance(slots, slice):
                cache[:, :, :, slots] = kv
            else:
                cache.index_copy_(3, slots, kv)
            o = self._attend(q, cache[0, :, :, :kv_len], cache[1, :, :, :kv_len], bias, attn.scaling)
            o = o.transpose(1, 2).reshape(ids.shape[0], ids.shape[1], -1)
            post = layer.post_attention_layernorm
            (y,), lora = g_o.project(o)
            x, h = add_norm(x, y, lora, post.weight, post.variance_epsilon)
            (gate, up), lora = g_gu.project(h)
            a = silu_mul(gate, up, lora, g_gu.splits)
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.decoder.norm
            (y,), lora = g_down.project(a)
            x, h = add_norm(x, y, lora, nxt.weight, nxt.variance_epsilon)
        return h

    def _decode_kernels(
        self, x: torch.Tensor, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor
    ) -> torch.Tensor:
        """The layers for one token per row [B, hidden] with trainer.decode_kernels: per layer four
        group GEMMs (base outputs and x A^T), and the kernels that add the LoRA terms and do the rest
        (q/k norm + rotary + cache write, attention, residual add + RMSNorm, SwiGLU). Returns the
        final norm's output."""
        dk, st, heads = decode_kernels, self.state, (self.n_heads, self.n_kv, self.head_dim)
        for i, layer in enumerate(self.layers):
            attn, (g_qkv, g_o, g_gu, g_down) = layer.self_attn, self.adapters.groups[i]
            qn, kn = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
            qk_norm = None if qn is None else (qn.weight, kn.weight)
            eps = 0.0 if qn is None else qn.variance_epsilon
            y = dk.linear(h, g_qkv.fused)
            q = dk.qkv_to_cache(y, g_qkv.kernel_lora, qk_norm, eps, cos, sin, st.kv[i], slot, heads)
            o = dk.attend(q, st.kv[i], st.start, slot, attn.scaling)
            post = layer.post_attention_layernorm
            x, h = self._add_lora_norm(x, dk.linear(o, g_o.fused), g_o, post)
            a = dk.silu_mul(dk.linear(h, g_gu.fused), g_gu.kernel_lora, g_gu.splits[0])
            nxt = self.layers[i + 1].input_layernorm if i + 1 < len(self.layers) else self.decoder.norm
            x, h = self._add_lora_norm(x, dk.linear(a, g_down.fused), g_down, nxt)
        return h

    def _add_lora_norm(self, x: torch.Tensor, y: torch.Tensor, group: _Group, norm: Any) -> tuple[torch.Tensor, ...]:
        """Residual add of a one-projection group's output (its LoRA B GEMM on the x A^T columns), then `norm`."""
        n = group.splits[0]
        lora = None if group.a is None else F.linear(y[:, n:], group.b)
        return self._fused[1](x, y[:, :n], lora, norm.weight, norm.variance_epsilon)

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float
    ) -> torch.Tensor:
        B, H, T, D = q.shape
        group = H // self.n_kv
        if T == 1 and group > 1:
            # One query per head: fold each KV head's query heads into the query-length axis, so
            # the kernel reads every cached K/V once (head h uses KV head h // group, as repeat_kv).
            qg = q.reshape(B, self.n_kv, group, D)
            if self.decode_attention == "matmul":
                probs = self._softmax(torch.matmul(qg, k.transpose(-1, -2)), bias, scale)
                return torch.matmul(probs, v).reshape(B, H, 1, D)
            o = F.scaled_dot_product_attention(qg, k, v, attn_mask=bias, scale=scale)
            return o.reshape(B, H, 1, D)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=group > 1)

    def _logits(self, h: torch.Tensor, mm: Any = None) -> torch.Tensor:
        """The last position's logits [B, V] in the model's dtype (`mm`: the GEMM for a bias-free head)."""
        if mm is not None and getattr(self.lm_head, "bias", True) is None:
            return mm(h[:, -1], self.lm_head.weight)
        return self.lm_head(h[:, -1:])[:, 0]

    # -- prefill, decode ----------------------------------------------------------------------

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


def _bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill_(~valid, -math.inf)


def _is_silu(mlp: Any) -> bool:
    return isinstance(getattr(mlp, "act_fn", None), torch.nn.SiLU) or type(getattr(mlp, "act_fn", None)).__name__ in (
        "SiLUActivation",
        "SiLU",
    )


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m
