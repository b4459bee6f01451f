"""Fast rollouts for GRPO: a static KV cache and one decode step replayed from a CUDA graph.

Why: a GRPO step is mostly sampling. `transformers.generate` pays Python and launch overhead on
every token (and, in TRL's train-mode path with gradient checkpointing, runs without a KV cache),
so it reaches a small fraction of what the GPU can do. Here the decode step for the whole batch
(every layer, LoRA, sampling, EOS bookkeeping) is captured once in a CUDA graph per KV-length
bucket and replayed per token; all state lives in fixed-shape buffers on the device. On CUDA the
decode step runs through trainer.rollout.decode_kernels (Triton: LoRA + norm + rotary + cache write,
live-slot attention, SwiGLU, few-row GEMMs, the sampler), which reads only the live cache slots,
so one graph serves every step; `kernels=False` keeps the compiled-glue path (A/B timing, CPU).

Exactness: prompts are left-padded like `generate` does, positions and masks follow its rules, the
sampling filters are HF's warpers in HF's order (temperature, top-k, top-p, min-p), and finished
rows emit the pad token. Under greedy decoding the tokens equal `generate`'s and the per-token
log-probabilities agree to the dtype's rounding (tests/test_rollout.py).

Supported: decoder-only Llama-family layouts (Qwen3, Qwen2, Llama) with plain LoRA adapters.
`unsupported_reason(model)` says why another model is not; callers fall back to `generate`.

The package, read top-down:
- engine.py: `RolloutEngine` (constructor, `generate`, (re)allocation when shapes or weights change)
- decode.py: the prefill, the decode step and its CUDA graphs, the outputs read back
- forward.py: the decoder's forward pass over the KV cache (glue + GEMMs, or the Triton kernels)
- layout.py: the weight layout (one GEMM per projection group) and the LoRA factors' buffers
- state.py: the KV cache and every other tensor the decode step reads or writes
- sampling.py: `Sampling`, HF's warpers, the graph-safe draw, the `Rollout` returned
- glue.py: the pointwise ops between GEMMs (norms, rotary, SwiGLU), shared with the training step
- model.py: the model as the engine sees it, and `unsupported_reason`
- decode_kernels.py / decode_triton.py: the decode step's Triton kernels and their wrappers
- fast_grpo.py: TRL's GRPOTrainer with rollouts from this engine (imported on demand: it loads TRL)
"""

from trainer.rollout.engine import DONE_CHECK_EVERY, KV_BUCKET, PROMPT_ALIGN, RECOMPILE_LIMIT, RolloutEngine
from trainer.rollout.layout import PROJECTION_GROUPS
from trainer.rollout.model import SUPPORTED_MODEL_TYPES, causal_lm, unsupported_reason
from trainer.rollout.sampling import Rollout, Sampling, choose_tokens, filter_logits

__all__ = [
    "DONE_CHECK_EVERY",
    "KV_BUCKET",
    "PROJECTION_GROUPS",
    "PROMPT_ALIGN",
    "RECOMPILE_LIMIT",
    "SUPPORTED_MODEL_TYPES",
    "Rollout",
    "RolloutEngine",
    "Sampling",
    "causal_lm",
    "choose_tokens",
    "filter_logits",
    "unsupported_reason",
]
