"""The `unsloth` backend (GPU): FastLanguageModel loading, LoRA, generation and merged export.

Unsloth patches transformers, TRL and PEFT when it is imported, so `activate()` imports it at the
start of a stage (cli.py), before anything else imports them; importing this module imports
nothing heavy. Which engine generates is decided here and logged: vLLM (Unsloth's
`fast_inference`, colocated in this process) where `vllm` imports, Unsloth's own `generate`
otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trainer import models
from trainer.config import RunConfig
from trainer.errors import UserError
from trainer.format import apply_format

log = logging.getLogger(__name__)


def activate() -> None:
    """Import Unsloth now, before transformers / TRL / PEFT; fail with one line where it cannot run."""
    if importlib.util.find_spec("unsloth") is None:
        raise UserError(
            "backend: unsloth needs the unsloth package, which only the GPU image installs; "
            "run the stage in the container (make <stage>), or use --set backend=hf."
        )
    import torch

    if not torch.cuda.is_available():
        raise UserError(
            "backend: unsloth needs a CUDA GPU and none is visible; use --set backend=hf to run on CPU, "
            "or run in the container on a GPU machine."
        )
    early = [m for m in ("transformers", "trl", "peft") if m in sys.modules and "unsloth" not in sys.modules]
    if early:
        log.warning("%s imported before Unsloth: its patches may not all apply", ", ".join(early))
    import unsloth  # noqa: F401  (patches transformers, TRL and PEFT on import)


def vllm_imports() -> bool:
    """Whether vLLM can generate here. Importing it, not just finding it: a vLLM built for another
    torch is installed but unusable, and then Unsloth's own generation is the right choice."""
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import vllm  # noqa: F401
    except Exception as e:  # a broken vLLM raises anything from ImportError to RuntimeError
        log.warning("vllm is installed but does not import (%s: %s)", type(e).__name__, e)
        return False
    return True


def _adapter_rank(path: Path) -> int:
    return int(json.loads((path / "adapter_config.json").read_text())["r"])


def _gradient_checkpointing(cfg: RunConfig) -> str | bool:
    # "unsloth" offloads checkpointed activations to CPU RAM: Unsloth's long-context mode.
    return "unsloth" if cfg.lora.gradient_checkpointing else False


def rollouts_in_inference_mode(trainer: Any, cfg: RunConfig) -> None:
    """Generate GRPO rollouts in Unsloth's inference mode (KV cache on) when vLLM is off.

    Unsloth's GRPO trainer calls `generate` on the model as it trains: in training mode, with
    gradient checkpointing on, where transformers turns the KV cache off, so every new token
    recomputes the whole sequence. On the Qwen3-4B shape with 1833-token completions its first step
    had not finished after 7 minutes (docs/gpu.md). Around each rollout the model goes to
    `FastLanguageModel.for_inference` and back to `for_training` with the recipe's checkpointing."""
    from unsloth import FastLanguageModel

    original = trainer._generate_single_turn
    checkpointing = _gradient_checkpointing(cfg)

    def generate(*args: Any, **kwargs: Any) -> Any:
        FastLanguageModel.for_inference(trainer.model)
        try:
            return original(*args, **kwargs)
        finally:
            FastLanguageModel.for_training(trainer.model, use_gradient_checkpointing=checkpointing)

    trainer._generate_single_turn = generate
    log.info("GRPO rollouts: Unsloth's generate in inference mode (KV cache), back to training mode after")


def from_pretrained_kwargs(cfg: RunConfig, name: str, fast_inference: bool, max_lora_rank: int) -> dict[str, Any]:
    """FastLanguageModel.from_pretrained's arguments for the recipe's model `name` (a path or hub id).
    `fast_inference` starts vLLM beside it, taking models.vllm_memory_share of the GPU's memory, with
    LoRA up to rank `max_lora_rank` (vLLM serves adapters of that rank at most)."""
    return dict(
        model_name=name,
        revision=cfg.model.revision,
        max_seq_length=cfg.model.max_seq_length,
        dtype=models.torch_dtype(cfg.model),
        load_in_4bit=cfg.model.load_in_4bit,  # False: 16-bit LoRA, the recipe; True: QLoRA
        trust_remote_code=cfg.model.trust_remote_code,
        token=os.environ.get("HF_TOKEN"),
        use_gradient_checkpointing=_gradient_checkpointing(cfg),
        fast_inference=fast_inference,
        gpu_memory_utilization=models.vllm_memory_share(cfg),
        max_lora_rank=max_lora_rank,
        random_state=cfg.seed,
    )


def _load_base(cfg: RunConfig, fast_inference: bool, max_lora_rank: int) -> tuple[Any, Any]:
    """FastLanguageModel.from_pretrained with the recipe's model settings, and the formatted tokenizer."""
    from unsloth import FastLanguageModel

    name = models.resolve_model_path(cfg.model, cfg.seed)
    try:
        model, tokenizer = FastLanguageModel.from_pretrained(
            **from_pretrained_kwargs(cfg, name, fast_inference, max_lora_rank)
        )
    except OSError as e:
        raise UserError(f"could not load the model '{name}': {e}") from None
    apply_format(tokenizer, add_tokens=cfg.model.add_format_tokens)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, tokenizer


def training_model(cfg: RunConfig, start_adapter: Path | None, fast_inference: bool = False) -> tuple[Any, Any]:
    """(Unsloth-patched PEFT model with a trainable LoRA, tokenizer): a new adapter with the recipe's
    LoRA, or `start_adapter` to train on. `fast_inference` also starts vLLM for GRPO rollouts."""
    from unsloth import FastLanguageModel

    rank = max(cfg.lora.r, _adapter_rank(start_adapter) if start_adapter else 0)
    model, tokenizer = _load_base(cfg, fast_inference, max_lora_rank=rank)
    if start_adapter is None:
        model = FastLanguageModel.get_peft_model(
            model,
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            bias="none",
            use_gradient_checkpointing=_gradient_checkpointing(cfg),
            random_state=cfg.seed,
        )
    else:
        from peft import PeftModel

        # What FastLanguageModel.from_pretrained(<adapter folder>) does, but on the recipe's base
        # model rather than the base path recorded inside the adapter.
        model = PeftModel.from_pretrained(model, str(start_adapter), is_trainable=True)
        model = FastLanguageModel.patch_peft_model(model, use_gradient_checkpointing=_gradient_checkpointing(cfg))
    return model, tokenizer


def inference_model(cfg: RunConfig, adapters: dict[str, Path]) -> tuple[Any, Any]:
    """The base model with each named adapter (switch with models.use_adapter), and the tokenizer:
    in vLLM where it imports, else Unsloth's own generation (FastLanguageModel.for_inference)."""
    from unsloth import FastLanguageModel

    rank = max([cfg.lora.r, *(_adapter_rank(p) for p in adapters.values())])
    if vllm_imports():
        log.info("generation: vLLM through Unsloth's fast_inference")
        model, tokenizer = _load_base(cfg, fast_inference=True, max_lora_rank=rank)
        return VllmModel(model.vllm_engine, adapters, tokenizer.pad_token_id), tokenizer
    log.info("generation: Unsloth's own generate (vllm does not import here)")
    model, tokenizer = _load_base(cfg, fast_inference=False, max_lora_rank=rank)
    model = models.load_adapters(model, adapters)
    FastLanguageModel.for_inference(model)
    return model, tokenizer


def save_merged(cfg: RunConfig, adapter: Path, dest: Path) -> None:
    """The base model with `adapter` merged in, 16 bit, and the tokenizer, written to `dest`."""
    model, tokenizer = training_model(cfg, start_adapter=adapter)
    model.save_pretrained_merged(str(dest), tokenizer, save_method="merged_16bit")


class VllmModel:
    """Unsloth's vLLM engine with the adapters as LoRA requests, behind the calls that
    generation.generate and models.use_adapter make on a transformers model (`generate`,
    `set_adapter`, `disable_adapter`), so eval and infer keep one code path for both engines."""

    def __init__(self, engine: Any, adapters: dict[str, Path], pad_token_id: int) -> None:
        import torch
        from vllm.lora.request import LoRARequest

        self.engine = engine
        self.requests = {name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate(adapters.items())}
        self.active: str | None = next(iter(self.requests), None)  # PEFT also starts on the first adapter
        self.pad_token_id = pad_token_id
        self.device = torch.device("cpu")  # vLLM takes token ids as lists; nothing goes to the GPU here

    def eval(self) -> VllmModel:
        return self

    def set_adapter(self, name: str) -> None:
        self.active = name

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        saved, self.active = self.active, None
        try:
            yield
        finally:
            self.active = saved

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any,
        max_new_tokens: int,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        num_return_sequences: int = 1,
        **_: Any,
    ) -> Any:
        """Like transformers' generate: each prompt row (left padded) followed by its generated ids,
        rows padded to one width; `num_return_sequences` rows per prompt, in prompt order."""
        import torch
        from vllm import SamplingParams

        params = SamplingParams(
            n=num_return_sequences if do_sample else 1,
            temperature=temperature if do_sample else 0.0,
            top_k=(top_k or -1) if do_sample else -1,
            max_tokens=max_new_tokens,
        )
        prompts = [
            {"prompt_token_ids": ids[mask.bool()].tolist()} for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        outputs = self.engine.generate(
            prompts, params, lora_request=self.requests.get(self.active) if self.active else None, use_tqdm=False
        )
        rows = [input_ids[i].tolist() + list(c.token_ids) for i, out in enumerate(outputs) for c in out.outputs]
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.pad_token_id] * (width - len(r)) for r in rows])
