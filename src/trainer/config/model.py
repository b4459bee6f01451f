"""The recipe's `model` and `lora` sections: which base model to load, how, and the LoRA adapter on it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from trainer.config.fields import setting
from trainer.errors import ConfigError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ModelConfig:
    name: str = setting("unsloth/Qwen3-4B-Base", "Hub id or local path of the base causal LM.")
    init: Literal["pretrained", "tiny"] = setting(
        "pretrained",
        "'tiny': build a tiny random Qwen3 model and tokenizer at `name` if it does not exist yet "
        "(the embedded default); 'pretrained': load `name` as it is.",
    )
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the base model.")
    gguf_file: str | None = setting(
        None,
        "A GGUF file to load instead of HF weights: its name inside the folder `name` (or an absolute "
        "path). Loaded by transformers, every weight dequantized to `dtype`; backend hf only (convert it "
        "for unsloth: scripts/fetch_gguf_model.py --gguf FILE --out DIR, then model.name=DIR).",
    )
    max_seq_length: int = setting(2048, "Longest sequence (prompt + completion) any stage handles.", ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting(
        "auto", "Weights dtype: 'auto' is bfloat16 on a GPU that supports it, else float32."
    )
    load_in_4bit: bool = setting(False, "QLoRA: load the base weights in 4 bit (unsloth backend only).")
    add_format_tokens: bool = setting(
        False,
        "Add the reasoning tags to the vocabulary where the tokenizer lacks them (resizes the "
        "embeddings). Off for the reference recipe: its LoRA does not train embeddings, so the tags "
        "stay plain text there.",
    )
    trust_remote_code: bool = setting(False, "Run model code from the hub repo. Off unless a recipe needs it.")


# A Hugging Face hub id: `name` or `org/name` of word characters, '-' and '.' (huggingface_hub's
# validate_repo_id); anything else can only be a local path.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def looks_local(name: str) -> bool:
    """Whether `name` can only mean a folder here, never a hub id: absolute, starting with ./ ../ or ~,
    with more than one '/', or otherwise not of the hub's form. `org/name` stays a hub id."""
    return name.startswith(("/", "./", "../", "~")) or ".." in name or not _HUB_ID.fullmatch(name)


def check_model_folder(cfg: ModelConfig, recipe: str | None = None) -> None:
    """Stop before anything loads when `cfg.name` is a local path (`looks_local`) that is not a folder:
    transformers would take it for a hub id and say only that it is not of the hub's form. Under
    model.init tiny, when `cfg.name` is taken by something that is no model (`check_tiny_path`).
    `recipe`: the recipe file, for the hint. Raises ConfigError."""
    own_gguf = cfg.gguf_file is not None and Path(cfg.gguf_file).is_absolute()  # then `name` is unused
    if cfg.init == "tiny":
        from trainer.tiny import check_tiny_path

        check_tiny_path(cfg.name)
        return
    if own_gguf or not looks_local(cfg.name):
        return
    if cfg.name and Path(cfg.name).expanduser().is_dir():  # Path("") would be the working directory
        return
    if Path(cfg.name).parent.name == "models" or (recipe and Path(recipe).name == "qwen2.5-0.5b-gsm8k.yaml"):
        hint = "for the real model of configs/qwen2.5-0.5b-gsm8k.yaml run `make real-model` first"
    else:
        hint = "point model.name at a model folder, or use model.init=tiny for the tiny test model"
    raise ConfigError(f"model.name '{cfg.name}' is not a folder here (a hub id has the form org/name); {hint}.")


@dataclass
class LoraConfig:
    r: int = setting(32, "LoRA rank.", ge=1)
    alpha: int = setting(64, "LoRA alpha (scale = alpha / r).", gt=0)
    dropout: float = setting(0.0, "LoRA dropout.", ge=0, lt=1)
    target_modules: list[str] = setting(LORA_TARGETS, "Module names that get LoRA adapters.")
    gradient_checkpointing: bool = setting(True, "Recompute activations in the backward pass to save memory.")
