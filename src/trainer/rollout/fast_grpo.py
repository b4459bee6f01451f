"""TRL's GRPOTrainer with rollouts from `trainer.rollout` (config: `grpo.rollout_engine: fast`).

Four things change. `_generate_single_turn`, where TRL calls `model.generate` on its plain
transformers path, samples with the engine instead; where the engine does not apply (vLLM, TRL's
paged generation, images, repetition penalty or extra generation kwargs, DeepSpeed / FSDP
sharding, a model the engine does not support), the call goes to TRL unchanged and the reason is
logged once (the grpo stage refuses an FSDP / DeepSpeed launch before loading anything:
`distributed.check_rollout_engine`). Under DDP each process rolls out on its own GPU, from the
model inside the DDP wrapper, whose LoRA weights the optimizer updates in place. The training step runs PEFT's LoRA layers through `lean_lora` (below), the same
sum without PEFT's float32 round trip; and on a GPU, the decoder's RMSNorms, SwiGLU product and
rotary embedding through `compiled_glue` (below), the same operations as fused kernels. The
loss's log-probabilities come from TRL's chunked LM-head path (`chunked_logps`), so no
[tokens, vocabulary] float32 logits are held. Each step logs the gap between the engine's sampling
log-probs and the loss's (`sampling/sampling_logp_difference/{mean,max}`, TRL's names): near zero
when the rollouts came from the policy being trained, large when they did not.
Tokenisation, rewards, advantages and the loss stay TRL's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context

from trainer.config import RunConfig
from trainer.rollout import RolloutEngine, Sampling, causal_lm, unsupported_reason
from trainer.rollout.glue import _rms_norm, _silu_mul

log = logging.getLogger(__name__)


class FastGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose rollouts come from a CUDA-graph decode loop over the live LoRA model."""

    _rollout_engine: RolloutEngine | None = None
    _rollout_fallback: str | None = None
    lean_lora = True  # run the training step's LoRA layers through lean_lora
    compiled_glue = True  # on CUDA, run the training step's norms / SwiGLU / rotary compiled (compiled_glue)
    rollout_fuse = True  # the engine's one-GEMM-per-group weight layout (RolloutEngine's `fuse`)
    rollout_kernels: bool | None = None  # the engine's Triton decode kernels (None: where they run)
    chunked_logps = True  # the loss's log-probs through TRL's chunked LM head (no full-vocabulary logits)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss_logps: torch.Tensor | None = None  # the last log-probs computed with grad (the loss's)
        reason = self._chunked_logps_reason()
        if reason is None:
            # TRL 1.14 gates its own chunked log-prob path (trainer.utils._ChunkedLogProbFunction, plain
            # torch) behind `use_liger_kernel`, whose only other effect is an import check for the
            # liger-kernel package, which that path never calls. Setting the flag after __init__ takes the
            # path without the package; `_forward_redirection` is what __init__ would have set with it.
            # Goes when TRL exposes the path on its own switch.
            from trl.models.utils import _ForwardRedirection

            self.use_liger_kernel = True
            self._forward_redirection = _ForwardRedirection()
        elif self.chunked_logps:
            log.info("loss log-probs from full logits: %s", reason)

    def _chunked_logps_reason(self) -> str | None:
        """Why the loss cannot take TRL's chunked log-prob path (None: it can)."""
        if not self.chunked_logps:
            return "chunked_logps is off"
        if not hasattr(self, "_chunked_logps"):
            return "this TRL version has no chunked log-prob path"
        if self.use_liger_kernel:
            return "use_liger_kernel is on already"
        if getattr(self, "aux_loss_enabled", False):
            return "the model adds a MoE auxiliary loss"
        head = self.accelerator.unwrap_model(self.model).get_output_embeddings()
        if hasattr(head, "lora_A"):
            return "lm_head carries a LoRA adapter (the chunked path reads its base weight only)"
        if getattr(self.model, "peft_config", None) and any(
            getattr(c, "is_prompt_learning", False) for c in self.model.peft_config.values()
        ):
            return "a prompt-learning adapter (virtual tokens) is active"
        return None

    def _get_per_token_logps_and_entropies(self, model, *args, **kwargs):
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(model, *args, **kwargs)
        if torch.is_grad_enabled():
            self._loss_logps = logps.detach()
        return logps, entropies, aux

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._loss_logps = None
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        self._log_sampling_gap(inputs)
        return loss

    def _log_sampling_gap(self, inputs: dict[str, Any]) -> None:
        """|engine log-prob - loss log-prob| per completion token, as TRL logs it for vLLM. The engine
        reports each token's log-prob under the temperature-scaled, unfiltered distribution, which is
        what the loss computes, so on-policy the gap is rounding (bf16: about 1e-2); rollouts from
        stale weights (an adapter update the engine missed) show up as a gap of the update's size."""
        sampled, logps = inputs.get("sampling_per_token_logps"), self._loss_logps
        if sampled is None or logps is None:  # the same on every process: no gather is missed
            return
        stats = torch.full((2,), float("nan"), device=logps.device)
        if sampled.shape == logps.shape:
            delta = (sampled - logps).abs()[inputs["completion_mask"].bool()]
            delta = delta[~torch.isnan(delta)]
            if delta.numel():
                stats = torch.stack([delta.mean(), delta.max()]).float()
        # Every process gathers, also one with nothing to report (NaN): a gather that some processes
        # skip would leave the others waiting in it.
        gathered = self.accelerator.gather(stats).view(-1, 2)
        if torch.isnan(gathered[:, 0]).all():
            return
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["sampling/sampling_logp_difference/mean"].append(gathered[:, 0].nanmean().item())
        self._metrics[mode]["sampling/sampling_logp_difference/max"].append(
            gathered[:, 1].nan_to_num(-1.0).max().item()
        )

    def training_step(self, model, inputs, num_items_in_batch):
        with contextlib.ExitStack() as stack:
            if self.lean_lora:
                stack.enter_context(lean_lora(self.model))
            if self.compiled_glue and self.accelerator.device.type == "cuda":
                stack.enter_context(compiled_glue(self.model))
            return super().training_step(model, inputs, num_items_in_batch)

    def fast_rollout_reason(self) -> str | None:
        """Why this trainer's rollouts go through TRL's own generation (None: they use the engine)."""
        if self.use_vllm:
            return "grpo.use_vllm is on (vLLM generates)"
        if self.use_transformers_continuous_batching:
            return "TRL's paged (continuous-batching) generation is on"
        if self.repetition_penalty != 1.0 or self.args.generation_kwargs not in (None, {}):
            return "repetition_penalty or generation_kwargs are set"
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return "the model is sharded (DeepSpeed / FSDP)"
        return unsupported_reason(self.accelerator.unwrap_model(self.model_wrapped))

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        # The rest goes to TRL as given: TRL 1.14 passes has_tool_images, 1.15 num_generations first
        # (the engine needs neither: TRL repeats each prompt per generation before this call).
        reason = self.fast_rollout_reason() if self._rollout_engine is None else None
        if reason is None and (images is not None or multimodal_fields):
            reason = "the prompts carry images"
        if reason is not None:
            if reason != self._rollout_fallback:
                level = logging.INFO if self.use_vllm else logging.WARNING
                log.log(level, "fast rollouts off, TRL generates: %s", reason)
                self._rollout_fallback = reason
            return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
        sampling = Sampling(
            do_sample=True,
            temperature=self.temperature,
            top_k=self.top_k or 0,
            top_p=1.0 if self.top_p is None else self.top_p,
            min_p=self.min_p,
        )
        with profiling_context(self, "fast_rollout.generate"):
            rollout = self._engine().generate(prompt_ids, self.max_completion_length, sampling)
        # The sampling log-probs: TRL pads them into `sampling_per_token_logps`, which its loss reads
        # only for an off-policy mask (off by default); `_log_sampling_gap` compares them with the loss's.
        return rollout.completion_ids, rollout.logprobs

    def _engine(self) -> RolloutEngine:
        if self._rollout_engine is None:
            tok = self._tokenizer
            eos = tok.eos_token_id
            self._rollout_engine = RolloutEngine(
                self.accelerator.unwrap_model(self.model_wrapped),
                eos_token_ids=list(eos) if isinstance(eos, (list, tuple)) else [eos],
                pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
                fuse=self.rollout_fuse,
                kernels=self.rollout_kernels,
            )
        return self._rollout_engine


@contextlib.contextmanager
def lean_lora(model: Any) -> Iterator[None]:
    """Within this block, PEFT LoRA linears under autocast compute `base(x) + s * B(A(x))` as one
    in-place `addmm_` on the base output, without the float32 copies PEFT makes of every input and output
    (it casts x to the adapter's float32 dtype, then autocast casts it back for the matmul, and the
    sum is formed and cast elementwise): on Qwen3-4B with 20k tokens that is gigabytes of traffic
    per layer and pass. Layers with dropout, variants (DoRA) or without autocast keep PEFT's own
    forward, and so do layers where the lean sum would not be exact: a trainable base bias, and a
    Conv1D base (fan_in_fan_out). The result is the same sum, rounded once instead of three times."""
    from peft.tuners.lora import Linear as LoraLinear

    patched = [m for m in model.modules() if type(m) is LoraLinear and "forward" not in vars(m)]
    for m in patched:
        m.forward = types.MethodType(_lean_lora_forward, m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _lean_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    active = [a for a in self.active_adapters if a in self.lora_A]
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or not torch.is_autocast_enabled(x.device.type)
        # Exact only for a plain Linear with a frozen or absent bias: the lean sum has no gradient
        # for a trainable bias (adapter bias "lora_only" / "all"), and Conv1D (fan_in_fan_out,
        # GPT-2 style) stores its weight transposed.
        or self.fan_in_fan_out
        or not isinstance(self.base_layer, torch.nn.Linear)
        or (self.base_layer.bias is not None and self.base_layer.bias.requires_grad)
        or any(
            a in self.lora_variant
            or self.lora_B[a].bias is not None
            or not isinstance(self.lora_dropout[a], torch.nn.Identity)
            for a in active
        )
    ):
        return type(self).forward(self, x, *args, **kwargs)
    if len(active) == 1 and not self.base_layer.weight.requires_grad:
        a = active[0]
        dtype = torch.get_autocast_dtype(x.device.type)
        flat = _LoraLinear.apply(
            x.reshape(-1, x.shape[-1]).to(dtype),
            self.base_layer.weight.to(dtype),
            None if self.base_layer.bias is None else self.base_layer.bias.to(dtype),
            self.lora_A[a].weight.to(dtype),
            self.lora_B[a].weight.to(dtype),
            self.scaling[a],
        )
        return flat.view(*x.shape[:-1], flat.shape[-1])
    # 2-D, so that the in-place add below writes into the GEMM's own output, not into a view of it
    # (autograd undoes an in-place op on a view with a full copy in the backward).
    flat = self.base_layer(x.reshape(-1, x.shape[-1]))
    for a in active:
        xa = F.linear(x, self.lora_A[a].weight).reshape(-1, self.r[a])
        # In place: an out-of-place addmm first copies the whole base output (cuBLAS accumulates into
        # its output), 60 ms of copies per Qwen3-4B step (docs/benchmarks.md). No backward reads the
        # base output (a Linear saves its input), so adding into it is safe; autocast does not
        # cover in-place ops, hence the cast of B that autocast would otherwise make.
        flat.addmm_(xa, self.lora_B[a].weight.t().to(flat.dtype), alpha=self.scaling[a])
    return flat.view(*x.shape[:-1], flat.shape[-1])


class _LoraLinear(torch.autograd.Function):
    """y = x W^T + s (x A^T) B^T with W frozen, its backward written out so that the input's
    gradient is one GEMM plus one accumulating GEMM (dx = dy W, then dx += s (dy B) A in place).
    Through autograd the two terms came from separate nodes and were summed by an add kernel that
    reads and writes the whole input gradient: 7 per layer, about a third of the 68 ms of bf16
    adds in a Qwen3-4B GRPO step's training part (docs/benchmarks.md). Same products otherwise."""

    @staticmethod
    def forward(ctx: Any, x, weight, bias, a, b, scale: float):  # noqa: ANN001, ANN205
        y = F.linear(x, weight, bias)
        xa = F.linear(x, a)
        y.addmm_(xa, b.t(), alpha=scale)  # in place: no copy of the base output (see above)
        ctx.save_for_backward(x, weight, a, b, xa)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx: Any, dy):  # noqa: ANN001, ANN205
        x, weight, a, b, xa = ctx.saved_tensors
        s = ctx.scale
        dy = dy.contiguous()
        dyb = dy @ b
        dx = dy @ weight
        dx.addmm_(dyb, a, alpha=s)
        da = torch.mm(dyb.t(), x).mul_(s)
        db = torch.mm(dy.t(), xa).mul_(s)
        return dx, None, None, da, db, None


@contextlib.contextmanager
def compiled_glue(model: Any, backend: str = "inductor") -> Iterator[None]:
    """Within this block the decoder's RMSNorms, its SiLU(gate) * up product and its rotary embedding
    run as `torch.compile`d functions: the same operations (the norm's float32 round trip included),
    each fused into one kernel forward and one backward, where eager PyTorch runs each as five to ten
    kernels that each read and write the whole activation. On Qwen3-4B with 20k tokens a step that
    is tens of GB of memory traffic per pass, run three times with gradient checkpointing.
    Shapes are torch.compile's default, static until a second shape is seen, then dynamic in the
    dimensions that changed: fully dynamic kernels (dynamic=True) ran the rotary embedding at a
    tenth of the memory bandwidth on Qwen3-4B (docs/benchmarks.md). Models whose layers do not
    look like Llama / Qwen (see `rollout.unsupported_reason`) are left alone."""
    if unsupported_reason(model) is not None:
        yield
        return
    fns = _glue_functions(backend)
    lm = causal_lm(model)
    layers = lm.get_decoder().layers
    norms = [m for m in lm.modules() if type(m).__name__.endswith("RMSNorm") and hasattr(m, "variance_epsilon")]
    glue = [(m, _compiled_norm_forward) for m in norms] + [(layer.mlp, _compiled_mlp_forward) for layer in layers]
    modeling = {sys.modules[type(layer.self_attn).__module__] for layer in layers}
    saved_rotary = {mod: mod.apply_rotary_pos_emb for mod in modeling if hasattr(mod, "apply_rotary_pos_emb")}
    glue = [(m, forward) for m, forward in glue if "forward" not in vars(m)]  # leave one someone else set
    for m, forward in glue:
        m.forward = types.MethodType(functools.partial(forward, fns), m)
    for mod, fn in saved_rotary.items():
        if fn not in fns["rotary"]:
            fns["rotary"][fn] = torch.compile(fn, backend=backend)
        mod.apply_rotary_pos_emb = fns["rotary"][fn]
    try:
        yield
    finally:
        for m, _ in glue:
            del m.forward
        for mod, fn in saved_rotary.items():
            mod.apply_rotary_pos_emb = fn


_GLUE: dict[str, dict[str, Any]] = {}  # backend -> compiled functions, made once per process


def _glue_functions(backend: str) -> dict[str, Any]:
    if backend not in _GLUE:
        compile_ = functools.partial(torch.compile, backend=backend)
        _GLUE[backend] = {"norm": compile_(_train_norm), "silu_mul": compile_(_train_silu_mul), "rotary": {}}
    return _GLUE[backend]


# The rollout engine's own norm and SiLU product (one definition of each), called through functions
# of their own: torch.compile allows a few compiled variants per function (8), and the engine's
# decode shapes should not use up what the training shapes (3 norm shapes, each static then dynamic) need.
def _train_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _rms_norm(x, weight, eps)


def _train_silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return _silu_mul(gate, up, None, [])


def _compiled_norm_forward(fns: dict[str, Any], self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return fns["norm"](hidden_states, self.weight, self.variance_epsilon)


def _compiled_mlp_forward(fns: dict[str, Any], self: Any, x: torch.Tensor) -> torch.Tensor:
    return self.down_proj(fns["silu_mul"](self.gate_proj(x), self.up_proj(x)))


def trainer_class(cfg: RunConfig, default: type) -> type:
    """The GRPO trainer class for the recipe: FastGRPOTrainer where `grpo.rollout_engine` is 'fast'
    on backend hf, else `default` (TRL's class, or Unsloth's patched one on backend unsloth, whose
    model and trainer the fast engine has not been measured with)."""
    if cfg.fast_rollouts:
        return FastGRPOTrainer
    if cfg.grpo.rollout_engine == "fast":
        log.info("grpo.rollout_engine: fast applies to backend hf; backend %s generates its own way", cfg.backend)
    return default
