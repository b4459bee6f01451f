"""The recipe's `model` and `lora` sections: which base model to load, how, and the LoRA adapter on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.config.fields import setting

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


@dataclass
class LoraConfig:
    r: int = setting(32, "LoRA rank.", ge=1)
    alpha: int = setting(64, "LoRA alpha (scale = alpha / r).", gt=0)
    dropout: float = setting(0.0, "LoRA dropout.", ge=0, lt=1)
    target_modules: list[str] = setting(LORA_TARGETS, "Module names that get LoRA adapters.")
    gradient_checkpointing: bool = setting(True, "Recompute activations in the backward pass to save memory.")
