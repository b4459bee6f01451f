"""Loading the base model, tokenizer and LoRA adapters (the `hf` backend: transformers + PEFT).

Backend-neutral helpers here (model path, dtype, adapters) are used by trainer.unsloth_backend too;
this module imports no backend (trainer.backend and trainer.training choose one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer.config import LoraConfig, ModelConfig, RunConfig
from trainer.distributed import device_map, main_process_first
from trainer.errors import UserError
from trainer.format import apply_format

log = logging.getLogger(__name__)


def torch_dtype(cfg: ModelConfig) -> Any:
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# Colocated vLLM's share of GPU memory when grpo.vllm_gpu_memory_utilization is unset. Unsloth's
# trainer runs on the weights vLLM loaded, so its share covers the one copy of the model and the KV
# cache, and training needs only the rest (the reference recipe's 0.9). TRL's vLLM on the hf backend
# loads a second copy beside the trainer's model, optimizer and activations (TRL's own default, 0.3).
VLLM_MEMORY_SHARE = {"unsloth": 0.9, "hf": 0.3}


def vllm_memory_share(cfg: RunConfig) -> float:
    """The share of GPU memory (0-1] colocated vLLM may take: the recipe's, else the backend's default."""
    share = cfg.grpo.vllm_gpu_memory_utilization
    return VLLM_MEMORY_SHARE[cfg.backend] if share is None else share


def resolve_model_path(cfg: ModelConfig, seed: int = 0) -> str:
    """The path or hub id to load; builds the tiny model first when the recipe asks for it."""
    if cfg.init == "tiny":
        from trainer.tiny import ensure_tiny_model

        # Under several processes one builds it and the others load that copy, instead of racing.
        with main_process_first():
            return str(ensure_tiny_model(cfg.name, seed))
    return cfg.name


def load_tokenizer(cfg: RunConfig, source: str | None = None) -> Any:
    """The tokenizer with the reasoning format applied. `source` loads a saved adapter's copy."""
    from transformers import AutoTokenizer

    if source is None and cfg.model.gguf_file is not None:
        from trainer import gguf_model

        tok = gguf_model.load_tokenizer(gguf_model.read_info(gguf_model.gguf_path(cfg.model.name, cfg.model.gguf_file)))
        apply_format(tok, add_tokens=cfg.model.add_format_tokens)
        return tok
    name = source or resolve_model_path(cfg.model, cfg.seed)
    try:
        tok = AutoTokenizer.from_pretrained(
            name, revision=None if source else cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code
        )
    except OSError as e:
        raise UserError(f"could not load the tokenizer of '{name}': {e}") from None
    apply_format(tok, add_tokens=cfg.model.add_format_tokens and source is None)
    return tok


def load_base_model(cfg: RunConfig, tokenizer: Any) -> Any:
    from transformers import AutoModelForCausalLM

    name = resolve_model_path(cfg.model, cfg.seed)
    if cfg.model.gguf_file is not None:
        from trainer import gguf_model

        info = gguf_model.read_info(gguf_model.gguf_path(name, cfg.model.gguf_file))
        return _fit_to_tokenizer(gguf_model.load_model(info, torch_dtype(cfg.model), device_map()), tokenizer)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name,
            revision=cfg.model.revision,
            dtype=torch_dtype(cfg.model),
            trust_remote_code=cfg.model.trust_remote_code,
            device_map=device_map(),
        )
    except OSError as e:
        raise UserError(f"could not load the model '{name}': {e}") from None
    return _fit_to_tokenizer(model, tokenizer)


def _fit_to_tokenizer(model: Any, tokenizer: Any) -> Any:
    """Room in the embedding for every token, and the tokenizer's pad / EOS for generation."""
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def peft_config(cfg: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


def add_lora(model: Any, cfg: LoraConfig) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, peft_config(cfg))


def load_adapter(model: Any, path: Path, trainable: bool) -> Any:
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def load_adapters(model: Any, adapters: dict[str, Path]) -> Any:
    """`model` with each adapter loaded under its name (the first one active); `model` itself if none."""
    for i, (name, path) in enumerate(adapters.items()):
        if i == 0:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
        else:
            model.load_adapter(str(path), adapter_name=name)
    return model


def use_adapter(model: Any, name: str | None) -> Any:
    """A context manager that runs `model` with adapter `name`, or with none (the base model)."""
    import contextlib

    if name is None:
        return model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    model.set_adapter(name)
    return contextlib.nullcontext()
