"""What the SFT and GRPO stages share: the model to train, trainer arguments, resume, saving."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from trainer import models
from trainer.config import RunConfig
from trainer.errors import UserError
from trainer.volume import save_adapter, stage_dir, write_run_record

log = logging.getLogger(__name__)


def check_backend(cfg: RunConfig, optim: str) -> None:
    """Fail before loading anything when the machine cannot run this recipe."""
    import torch

    if cfg.backend == "unsloth" and not torch.cuda.is_available():
        raise UserError(
            "backend: unsloth needs a CUDA GPU and none is visible; use --set backend=hf to train on CPU, "
            "or run in the container on a GPU machine."
        )
    if "8bit" in optim and importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"optim: {optim} needs bitsandbytes (GPU image only); use --set <stage>.optim=adamw_torch here."
        )


def training_model(cfg: RunConfig, start_adapter: Path | None) -> tuple[Any, Any]:
    """(model with a trainable LoRA adapter, tokenizer). A new adapter, or `start_adapter` resumed."""
    if cfg.backend == "unsloth":
        from trainer import unsloth_backend

        return unsloth_backend.training_model(cfg, start_adapter)
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


def common_args(cfg: RunConfig, stage: str, s: Any) -> dict[str, Any]:
    """Trainer arguments both stages take from the recipe in the same way."""
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
        save_total_limit=2,
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=list(cfg.report_to) or "none",
        bf16=dtype == "torch.bfloat16",
        fp16=dtype == "torch.float16",
        # The model already carries checkpointing set up for LoRA (training_model).
        gradient_checkpointing=False,
        save_only_model=False,
    )


def last_checkpoint(args: Any) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(args.output_dir)
    found = get_last_checkpoint(str(path)) if path.is_dir() else None
    if found:
        log.info("resuming from %s", found)
    return found


def finish(cfg: RunConfig, stage: str, trainer: Any, tokenizer: Any, **extra: Any) -> Path:
    """Save the adapter atomically and the run record beside it; return the adapter path."""
    adapter = save_adapter(trainer.model, tokenizer, stage_dir(cfg, stage) / "adapter")
    write_run_record(cfg, stage, adapter=str(adapter), global_step=trainer.state.global_step, **extra)
    log.info("%s adapter written to %s", stage, adapter)
    return adapter
