"""Batched generation for evaluation and inference (transformers `generate`, left padding)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm


@dataclass
class Completion:
    text: str  # decoded, special tokens skipped (tags are ordinary tokens and stay)
    num_tokens: int  # generated tokens up to and including EOS
    truncated: bool  # hit max_new_tokens before EOS


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
) -> list[list[Completion]]:
    """`num_samples` completions per conversation; temperature 0 means greedy."""
    import torch

    tokenizer.padding_side = "left"
    sampling = temperature > 0
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=tokenizer.pad_token_id)
    if sampling:
        kwargs.update(temperature=temperature, top_k=top_k or None, num_return_sequences=num_samples)
    eos = tokenizer.eos_token_id
    out: list[list[Completion]] = []
    model.eval()
    for start in tqdm(range(0, len(conversations), batch_size), desc=desc, unit="batch"):
        batch = conversations[start : start + batch_size]
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            ids = model.generate(**enc, **kwargs)
        gen = ids[:, enc["input_ids"].shape[1] :].tolist()
        per = num_samples if sampling else 1
        for i in range(len(batch)):
            group = []
            for seq in gen[i * per : (i + 1) * per]:
                n = seq.index(eos) + 1 if eos in seq else len(seq)
                group.append(
                    Completion(tokenizer.decode(seq[:n], skip_special_tokens=True), n, truncated=eos not in seq)
                )
            out.append(group)
    return out
