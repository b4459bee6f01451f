"""What the SFT and GRPO stages share: the model to train, trainer arguments, resume, saving."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from trainer import distributed, models
from trainer.config import RunConfig
from trainer.errors import UserError
from trainer.resilience import checkpoints
from trainer.resilience.resume import data_identity, stage_settings
from trainer.resilience.stopping import NonFiniteGuard, StopOnSignal
from trainer.volume import save_adapter, stage_dir, write_run_record

log = logging.getLogger(__name__)


def check_backend(cfg: RunConfig, optim: str) -> None:
    """Fail before loading anything when the machine cannot run this recipe."""
    import torch

    if cfg.backend == "unsloth" and cfg.grpo.use_vllm and cfg.grpo.vllm_mode == "server":
        # Unsloth's GRPO trainer rolls out with the vLLM engine it started (fast_inference) and
        # silently resets vllm_mode to colocate, so a server would sit unused.
        raise UserError(
            "grpo.vllm_mode: server needs backend hf (backend unsloth runs vLLM inside the trainer); "
            "use --set backend=hf, or --set grpo.vllm_mode=colocate."
        )
    if cfg.backend == "unsloth" and not torch.cuda.is_available():
        raise UserError(
            "backend: unsloth needs a CUDA GPU and none is visible; use --set backend=hf to train on CPU, "
            "or run in the container on a GPU machine."
        )
    if cfg.backend == "unsloth" and distributed.num_processes() > 1:
        raise UserError(
            "backend: unsloth trains on one GPU; several processes (GPUS / NNODES, accelerate launch) "
            "need --set backend=hf (docs/scaling.md)."
        )
    if cfg.model.dtype in ("bfloat16", "float16") and not torch.cuda.is_available():
        # The Trainer's mixed precision needs a GPU; it would fail only after the model has loaded.
        raise UserError(
            f"model.dtype: {cfg.model.dtype} trains on a GPU only and none is visible; "
            "use --set model.dtype=float32 (or auto) on CPU."
        )
    if "8bit" in optim and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"optim: {optim} needs bitsandbytes (GPU image only); use --set <stage>.optim=adamw_torch here."
        )
    # The names are checked with the recipe (config.run.REPORT_TO); transformers would raise only after
    # the model has loaded.
    for tracker in cfg.report_to:
        if tracker != "none" and importlib.util.find_spec(tracker) is None:
            raise UserError(
                f"report_to: {tracker} needs the {tracker} package, which is not installed here; "
                f"pip install {tracker}, or leave it out of report_to (TensorBoard needs no account)."
            )


def training_model(cfg: RunConfig, start_adapter: Path | None, fast_inference: bool = False) -> tuple[Any, Any]:
    """(model with a trainable LoRA adapter, tokenizer). A new adapter, or `start_adapter` resumed.
    `fast_inference`: GRPO rolls out with vLLM, which Unsloth starts beside the model (TRL does it on hf)."""
    from transformers import set_seed

    # The Trainer seeds only once it exists; without this the LoRA init (and so a run) differed per process.
    set_seed(cfg.seed)
    if cfg.backend == "unsloth":
        from trainer import unsloth_backend

        return unsloth_backend.training_model(cfg, start_adapter, fast_inference=fast_inference)
    tokenizer = models.load_tokenizer(cfg)
    model = models.load_base_model(cfg, tokenizer)
    if start_adapter is None:
        model = models.add_lora(model, cfg.lora)
    else:
        model = models.load_adapter(model, start_adapter, trainable=True)
    if cfg.lora.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA), no enable_input_require_grads hack.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, tokenizer


def use_vllm(cfg: RunConfig) -> bool:
    """Whether GRPO rolls out with vLLM: grpo.use_vllm asks for it, and vLLM imports here (the GPU
    image); otherwise the model's own generate (Unsloth's on the unsloth backend). Logged either way."""
    from trainer.unsloth_backend import vllm_imports

    if not cfg.grpo.use_vllm:
        how = "the fast engine (grpo.rollout_engine: fast)" if cfg.fast_rollouts else "the model's generate"
        log.info("GRPO rollouts: %s; grpo.use_vllm is false", how)
        return False
    if not vllm_imports():
        log.warning("GRPO rollouts: grpo.use_vllm is true but vllm does not import here; using the model's generate")
        return False
    log.info("GRPO rollouts: vLLM (%s)", cfg.grpo.vllm_mode)
    return True


def report_overrides(args: Any, requested: dict[str, Any]) -> list[str]:
    """Warn about each setting the trainer ended up with that differs from what the recipe passed.

    Unsloth's patched TRL configs and trainers rewrite some values (batch size, clipping, masking,
    top_k); the recipe states them, so a change here is something to look at, never silent."""
    changed = []
    for key, want in requested.items():
        have = getattr(args, key, want)
        if _setting(key, have) != _setting(key, want):
            changed.append(f"{key} {want!r} -> {have!r}")
    if changed:
        log.warning("the trainer changed settings the recipe set: %s", "; ".join(changed))
    return changed


def _setting(key: str, value: Any) -> Any:
    """`value` as the trainer means it: transformers turns names into str enums and "none" into [];
    vLLM spells top_k "off" as -1 where transformers says 0; no generation_kwargs is None or {}."""
    value = getattr(value, "value", value)
    if key == "report_to" and value in ("none", ["none"]):
        return []
    if key == "top_k" and value == -1:
        return 0
    if key == "generation_kwargs" and not value:
        return None
    return value


def common_args(cfg: RunConfig, stage: str, s: Any) -> dict[str, Any]:
    """Trainer arguments both stages take from the recipe in the same way."""
    import torch

    dtype = str(models.torch_dtype(cfg.model))
    out = stage_dir(cfg, stage)
    # transformers 5 dropped `logging_dir`; its TensorBoard callback reads this variable instead.
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "logs")
    return dict(
        output_dir=str(out / "checkpoints"),
        learning_rate=s.learning_rate,
        weight_decay=s.weight_decay,
        lr_scheduler_type=s.lr_scheduler_type,
        optim=s.optim,
        max_steps=s.max_steps,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        logging_steps=s.logging_steps,
        save_steps=s.save_steps,
        # Off: checkpoints.CheckpointManifest rotates (keep_checkpoints) only once the newest one is verified.
        save_total_limit=None,
        # Log a NaN loss as NaN (not the running mean), so NonFiniteGuard sees it.
        logging_nan_inf_filter=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=list(cfg.report_to) or "none",
        bf16=dtype == "torch.bfloat16",
        fp16=dtype == "torch.float16",
        # The model already carries checkpointing set up for LoRA (training_model).
        gradient_checkpointing=False,
        save_only_model=False,
        # Pinned memory only speeds host-to-GPU copies; on a CPU run torch warns at every epoch instead.
        dataloader_pin_memory=torch.cuda.is_available(),
        # DDP: every LoRA weight takes part in each forward pass, so skip the search for unused ones
        # (transformers turns it on for a PeftModel, costing a graph traversal per step).
        ddp_find_unused_parameters=False,
    )


def last_checkpoint(args: Any) -> str | None:
    """The newest checkpoint whose manifest verifies (checkpoints.last_checkpoint), or None."""
    path = Path(args.output_dir)
    # The main process picks, so that every process resumes from the same checkpoint.
    found = distributed.from_main_process(lambda: checkpoints.last_checkpoint(path))
    if found:
        log.info("resuming from %s", found)
    return str(found) if found else None


def train(trainer: Any, cfg: RunConfig, stage: str) -> None:
    """`trainer.train()` that survives preemption and crashes: resumes from the newest verified
    checkpoint, writes each checkpoint's manifest, stops cleanly on SIGTERM / SIGINT (raising
    trainer.errors.Interrupted once the checkpoint is saved) and on non-finite gradients."""
    out = Path(trainer.args.output_dir)
    stop = StopOnSignal()
    keep = getattr(cfg, stage).keep_checkpoints
    settings = stage_settings(cfg, stage)
    for callback in (stop, checkpoints.CheckpointManifest(keep, settings), NonFiniteGuard(stage)):
        trainer.add_callback(callback)
    compact_progress(trainer, stage)
    resume = last_checkpoint(trainer.args)
    if distributed.is_main_process():
        checkpoints.remove_newer(out, Path(resume) if resume else None)
    try:
        with stop.installed():
            trainer.train(resume_from_checkpoint=resume)
    finally:
        # On an exception transformers leaves its progress bar open, and it would redraw after the
        # CLI's one-line error; closed here, the error gets a line of its own.
        for callback in trainer.callback_handler.callbacks:
            if getattr(callback, "training_bar", None) is not None:
                callback.training_bar.close()
                callback.training_bar = None
    if stop.stopped:
        # Every process stopped after the same step (StopOnSignal agrees on it); none may exit before
        # the main one has written that checkpoint's manifest: a launcher ends the others as soon as
        # one process exits, which would leave the checkpoint without one (so it would not resume).
        distributed.wait_for_everyone()
    stop.raise_if_stopped(trainer.state, out, stage)


def compact_progress(trainer: Any, stage: str) -> None:
    """Keep transformers' progress bar, but print each logging step as one line (report.log_line),
    led by `stage`, instead of the dict of every metric (40 keys a step in GRPO): the full set is in
    TensorBoard."""
    from transformers.trainer_callback import ProgressCallback

    from trainer.report import log_line

    class CompactProgress(ProgressCallback):
        first_step = 0  # where this run began: a resumed checkpoint's step (loaded before on_train_begin)

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.first_step = state.global_step
            super().on_train_begin(args, state, control, **kwargs)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if state.is_world_process_zero and self.training_bar is not None and logs:
                self.training_bar.write(log_line(logs, state.global_step, state.max_steps, self.first_step, stage))

    if trainer.pop_callback(ProgressCallback) is not None:  # absent when the bar is off (disable_tqdm)
        trainer.add_callback(CompactProgress)


def full_state_dict(trainer: Any) -> dict[str, Any] | None:
    """The whole model's weights where ZeRO-3 / FSDP shard them across processes, else None (the model
    holds them). Every process must call it: gathering the shards is a collective."""
    if trainer.is_fsdp_enabled:
        return trainer.accelerator.get_state_dict(trainer.model)
    if trainer.is_deepspeed_enabled:
        return trainer.accelerator.get_state_dict(trainer.deepspeed)
    return None


def finish(cfg: RunConfig, stage: str, trainer: Any, tokenizer: Any, **extra: Any) -> Path:
    """Save the adapter atomically and the run record beside it, from the main process only; return
    the adapter path (on every process, once it is written)."""
    state_dict = full_state_dict(trainer)
    adapter = stage_dir(cfg, stage) / "adapter"
    if distributed.is_main_process():
        save_adapter(trainer.model, tokenizer, adapter, state_dict=state_dict)
        write_run_record(
            cfg,
            stage,
            adapter=str(adapter),
            global_step=trainer.state.global_step,
            num_processes=distributed.num_processes(),
            **data_identity(cfg, stage),
            **extra,
        )
        log.info("%s adapter written to %s", stage, adapter)
    distributed.wait_for_everyone()
    return adapter
