"""Batched generation for evaluation and inference: transformers `generate` (left padding), or on a
GPU the fast rollout engine (trainer.rollout), whose greedy tokens are generate's at a fraction of
the time: it decodes every row of a batch in one CUDA-graph step per token."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)
_SAID: set[str] = set()  # messages logged once each (_say)


@dataclass
class Completion:
    text: str  # decoded, special tokens skipped (tags are ordinary tokens and stay)
    num_tokens: int  # generated tokens up to and including EOS
    truncated: bool  # hit max_new_tokens before EOS


# What a model's generation_config keeps while the product generates (recipe_sampling_only): its
# token ids, and bookkeeping that changes no token.
_KEPT_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
_BOOKKEEPING = ("transformers_version", "_from_model_config", "use_cache", "output_attentions", "output_hidden_states")


@contextlib.contextmanager
def recipe_sampling_only(model: Any) -> Iterator[None]:
    """Within this block, `model`'s generate applies the sampling settings its caller passes and no
    others: eval, infer and GRPO rollouts alike (the fast rollout engine applies none either).

    transformers 5 fills every field a caller leaves unset from the model's generation_config, and
    a hub model may ship any of them: a repetition penalty, typical_p, min_p, bad words, a sequence
    bias, beams, stop strings. So the config is swapped for one holding only the model's token ids,
    and restored after (export saves the model's own); the fields left out are logged once.
    `model`: a transformers or PEFT model; anything without a generation_config is left alone."""
    from transformers import GenerationConfig

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    shipped = getattr(base, "generation_config", None)
    if shipped is None:
        yield
        return
    # transformers' own defaults (top_k 50, ...) are not the model's settings: not worth a log line.
    defaults = getattr(shipped, "_get_default_generation_params", dict)()
    left_out = {
        k: v
        for k, v in shipped.to_diff_dict().items()
        if k not in _KEPT_FIELDS and k not in _BOOKKEEPING and v is not None and v != defaults.get(k)
    }
    if left_out:
        fields = ", ".join(f"{k}={v!r}" for k, v in sorted(left_out.items()))
        _say(f"the model's generation_config sets {fields}; not applied: generation uses the recipe's settings only")
    base.generation_config = GenerationConfig(
        **{k: getattr(shipped, k) for k in _KEPT_FIELDS if getattr(shipped, k, None) is not None}
    )
    try:
        yield
    finally:
        base.generation_config = shipped


def rollouts_with_recipe_sampling(trainer: Any) -> None:
    """GRPO rollouts through TRL's (or Unsloth's) generate under `recipe_sampling_only`, as eval
    and infer generate, so that the recipe's sampling settings are the only ones on every path."""
    original = trainer._generate_single_turn

    def generate(*args: Any, **kwargs: Any) -> Any:
        with recipe_sampling_only(trainer.model):
            return original(*args, **kwargs)

    trainer._generate_single_turn = generate


def _say(message: str) -> None:
    """Log `message` once per process (eval generates per model and dataset, GRPO per step)."""
    if message not in _SAID:
        _SAID.add(message)
        log.info("%s", message)


def stop_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Token ids that end a completion: the tokenizer's EOS and the model's generation EOS (one id or a list)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


def generate(
    model: Any,
    tokenizer: Any,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    num_samples: int = 1,
    batch_size: int = 16,
    desc: str = "generating",
    engine: str = "generate",
) -> list[list[Completion]]:
    """`num_samples` completions per conversation, in input order; temperature 0 means greedy.

    Sampling settings are passed explicitly (top_k 0 is off, top_p 1, min_p off) and nothing else
    applies (`recipe_sampling_only`), so a model's own generation_config (Qwen3 ships top_k 20,
    top_p 0.95) does not change what is measured. `engine` 'fast': the rollout engine on a CUDA
    model it supports (the same settings: temperature, top-k, nothing else), else `generate` with
    the reason logged.
    """
    import torch

    tokenizer.padding_side = "left"
    sampling = temperature > 0
    stops = stop_token_ids(model, tokenizer)
    fast = _fast_engine(model, tokenizer, engine, sampling, temperature, top_k, stops)
    kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=tokenizer.pad_token_id
    )
    if sampling:
        kwargs.update(temperature=temperature, top_k=top_k, top_p=1.0, min_p=0.0, num_return_sequences=num_samples)
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    prompt_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = [len(ids) for ids in prompt_ids]
    # Longest prompts first: similar lengths share a batch (less padding), and a batch too large for
    # memory shows up at once rather than at the end.
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    out: list[list[Completion] | None] = [None] * len(texts)
    model.eval()
    per = num_samples if sampling else 1
    with tqdm(total=len(texts), desc=desc, unit="problem") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if fast is not None:
                rollout, how = fast
                prompts = [prompt_ids[i] for i in batch for _ in range(per)]
                gen = rollout.generate(prompts, max_new_tokens, how).completion_ids
            else:
                enc = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = enc.to(model.device)
                with torch.inference_mode(), recipe_sampling_only(model):
                    ids = model.generate(**enc, **kwargs)
                gen = ids[:, enc["input_ids"].shape[1] :].tolist()
            for j, i in enumerate(batch):
                out[i] = [_completion(seq, stops, tokenizer) for seq in gen[j * per : (j + 1) * per]]
            bar.update(len(batch))
    return out  # type: ignore[return-value]  # every slot is filled above


def _fast_engine(
    model: Any, tokenizer: Any, engine: str, sampling: bool, temperature: float, top_k: int, stops: set[int]
) -> tuple[Any, Any] | None:
    """(RolloutEngine, Sampling) where `engine` is 'fast' and the engine runs this model, else None.
    `stops`: the token ids that end a completion (stop_token_ids)."""
    if engine != "fast" or getattr(model, "vllm_engine", None) is not None:
        # Unsloth's fast_inference hangs its vLLM engine on the model, and its generate goes there:
        # neither this engine nor transformers' generate decodes (logged where the model loads).
        return None
    from trainer.rollout import RolloutEngine, Sampling, unsupported_reason

    reason = "the model is not on a GPU" if not _on_gpu(model) else unsupported_reason(model)
    if reason is not None:
        _say(f"generating with transformers' generate: {reason}")
        return None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rollout = RolloutEngine(model, eos_token_ids=sorted(stops), pad_token_id=pad)
    how = Sampling(do_sample=sampling, temperature=temperature if sampling else 1.0, top_k=top_k if sampling else 0)
    return rollout, how


def _on_gpu(model: Any) -> bool:
    # On a CPU transformers' generate is as fast as the engine's eager decode loop, and is the reference.
    return model.device.type == "cuda"


def _completion(seq: list[int], stops: set[int], tokenizer: Any) -> Completion:
    end = next((k for k, t in enumerate(seq) if t in stops), None)
    n = len(seq) if end is None else end + 1
    return Completion(tokenizer.decode(seq[:n], skip_special_tokens=True), n, truncated=end is None)
