"""A Qwen3-4B-shaped model with random weights, a tokenizer for it and a synthetic GRPO prompt set.

For measuring the reference recipe's GRPO step time and GPU memory where the real weights cannot
be downloaded (no network): same shapes as Qwen3-4B (hidden 2560, 36 layers, 32 heads, 8 KV heads,
head_dim 128, intermediate 9728, vocab 151936, tied embeddings), bfloat16, saved with
`save_pretrained` so the trainer loads it like a hub model. A random model never emits EOS, so
every completion runs to max_completion_length: the slowest step the recipe can take.

    python benchmarks/make_qwen3_4b_random.py OUT        # OUT/model/, OUT/adapter/ (fresh LoRA), OUT/prompts.jsonl
    python benchmarks/make_qwen3_4b_random.py OUT --no-model   # tokenizer and prompts only (CPU)

The tokenizer is the embedded tiny one (trainer.tiny) with filler tokens appended to 151936 entries,
so every id the model can sample decodes. The prompts are arithmetic sentences, as many per prompt as
makes the 90th-percentile prompt length (system prompt and chat template included) land near
`--prompt-cut` tokens: the recipe then derives max_prompt_length and max_completion_length from
that cut as it does from DAPO-Math.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path
from typing import Any

from qwen3_4b_shape import QWEN3_4B  # this folder (the script's own) is on sys.path

from trainer.data import prompt_length
from trainer.format import CHAT_TEMPLATE, TAGS, prompt_messages
from trainer.tiny import EOS, PAD, build_tokenizer

VOCAB = QWEN3_4B["vocab_size"]


def wide_tokenizer(vocab_size: int = VOCAB) -> Any:
    """The tiny BPE tokenizer with filler tokens ("fill0", "fill1", ...) up to `vocab_size` ids."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    small = build_tokenizer()
    data = json.loads(small.backend_tokenizer.to_str())
    # The tags and the pad go back on last, as build_tokenizer adds them, so the ids have no holes.
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in (*TAGS, PAD)]
    vocab = data["model"]["vocab"]
    next_id, i = len(vocab), 0
    while next_id < vocab_size - len(TAGS) - 1:
        if f"fill{i}" not in vocab:
            vocab[f"fill{i}"] = next_id
            next_id += 1
        i += 1
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)), eos_token=EOS)
    tok.add_tokens(TAGS)
    tok.add_special_tokens({"pad_token": PAD})
    tok.chat_template = CHAT_TEMPLATE
    ids = set(tok.get_vocab().values())
    assert len(tok) == vocab_size and ids == set(range(vocab_size)), (len(tok), len(ids))
    return tok


def prompt_rows(tokenizer: Any, target_cut: int, n: int, seed: int = 0) -> tuple[list[dict[str, str]], int]:
    """`n` rows {prompt, solution} whose 90th-percentile prompt length is the first at or above `target_cut`
    (measured as the GRPO stage measures it: trainer.data.prompt_length)."""

    def make(max_sentences: int) -> tuple[list[dict[str, str]], int]:
        rng = random.Random(seed)
        rows, lengths = [], []
        for _ in range(n):
            parts, total = [], 0
            for _ in range(rng.randint(1, max_sentences)):
                a, b = rng.randint(2, 999), rng.randint(2, 99)
                parts.append(f"Compute {a} + {b}, then keep the result.")
                total = a + b
            text = " ".join(parts) + " What is the last result?"
            rows.append({"prompt": text, "solution": str(total)})
            lengths.append(prompt_length(tokenizer, prompt_messages(text)))
        cut = sorted(lengths)[math.ceil(0.9 * n) - 1]
        return rows, cut

    for max_sentences in range(1, 500):
        rows, cut = make(max_sentences)
        if cut >= target_cut:
            return rows, cut
    raise ValueError(f"could not reach a prompt cut of {target_cut} tokens")


def build_model(tokenizer: Any, out: Path) -> int:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(**QWEN3_4B, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: half the memory and time of fp32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    # A fresh LoRA of the recipe's shape (B = 0, so the model's outputs are the base's), for GRPO to
    # start from without an SFT stage: on a fresh GPU machine, sft + 3 GRPO steps at the recipe's
    # lengths take longer than one device call allows (docs/gpu.md).
    from peft import LoraConfig, get_peft_model

    from trainer.config import LORA_TARGETS

    lora = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(out.parent / "adapter")
    tokenizer.save_pretrained(out.parent / "adapter")
    return n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--prompt-cut", type=int, default=200, help="aim of the 90th-percentile prompt length (tokens)")
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--no-model", action="store_true", help="tokenizer and prompts only")
    args = p.parse_args()
    tok = wide_tokenizer()
    rows, cut = prompt_rows(tok, args.prompt_cut, args.prompts)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "prompts.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"prompts: {len(rows)} in {args.out / 'prompts.jsonl'}, 90th-percentile length {cut} tokens")
    tok.save_pretrained(args.out / "model")
    if not args.no_model:
        n = build_model(tok, args.out / "model")
        print(f"model: {n / 1e9:.3f} B parameters in {args.out / 'model'}")


if __name__ == "__main__":
    main()
