"""The model as the decode step sees it: the CausalLM inside DDP / PEFT wrappers, its projections,
and `unsupported_reason`, which says why the fast path cannot run a model (callers then fall back to
`generate`). Supported: decoder-only Llama-family layouts (Qwen3, Qwen2, Llama) with plain LoRA."""

from __future__ import annotations

from typing import Any

import torch

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")


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


def _is_silu(mlp: Any) -> bool:
    return isinstance(getattr(mlp, "act_fn", None), torch.nn.SiLU) or type(getattr(mlp, "act_fn", None)).__name__ in (
        "SiLUActivation",
        "SiLU",
    )
