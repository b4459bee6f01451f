"""The model for the inference stages (eval, infer, export) from the recipe's backend: `hf` loads
through trainer.models (transformers + PEFT), `unsloth` through trainer.unsloth_backend.

Why a module of its own: the choice used to live in trainer.models, which then imported
unsloth_backend while unsloth_backend imported models' helpers (a cycle). Now the use goes one way:
this module -> unsloth_backend -> models. (The training stages choose theirs in trainer.training.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainer.config import RunConfig
from trainer.models import load_adapters, load_base_model, load_tokenizer


def inference_model(cfg: RunConfig, adapters: dict[str, Path]) -> tuple[Any, Any]:
    """The base model with each named adapter loaded (switch with `models.use_adapter`), and the tokenizer."""
    if cfg.backend == "unsloth":
        from trainer import unsloth_backend

        return unsloth_backend.inference_model(cfg, adapters)
    tokenizer = load_tokenizer(cfg)
    return load_adapters(load_base_model(cfg, tokenizer), adapters), tokenizer
