"""The embedded default model: a tiny random Qwen3 and a byte-level BPE tokenizer, built locally.

Built once (from the shipped sample data) and saved like a hub model, so every stage loads it
through the same `from_pretrained` path as `unsloth/Qwen3-4B-Base`. No network needed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from trainer.errors import ConfigError, override
from trainer.format import CHAT_TEMPLATE, SYSTEM_PROMPT, TAGS

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
# Its own pad token, as Qwen3's tokenizer has (<|vision_pad|>): Unsloth refuses a pad that is the
# EOS where the embedding has no spare row for a pad of its own. It is the last id, and its embedding
# row is added after the model's random init, so every other weight is what it was before the pad
# existed (the tiny model's learning, tests/test_learning.py, was measured with those weights).
PAD = "<|pad|>"
SAMPLE_DIR = Path(__file__).resolve().parent / "sample_data"


def _corpus() -> list[str]:
    texts = [SYSTEM_PROMPT]
    for f in sorted(SAMPLE_DIR.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            texts.extend(str(v) for v in json.loads(line).values())
    return texts


def build_tokenizer(vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS)
    # The tags are ordinary tokens (not special): decoding with skip_special_tokens keeps them.
    fast.add_tokens(TAGS)
    fast.add_special_tokens({"pad_token": PAD})
    fast.chat_template = CHAT_TEMPLATE
    return fast


TINY_SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
}


def build_model(vocab_size: int, seed: int = 0, **shape: int):
    """A random Qwen3 of the tiny shape (`shape` overrides its sizes, e.g. hidden_size=256)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=vocab_size,
        **{**TINY_SHAPE, **shape},
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    # The default init (std 0.02) makes tied-embedding logits so small that, with the base weights
    # frozen under LoRA, no output can become confident: the tiny model could never learn the format.
    torch.nn.init.normal_(model.get_input_embeddings().weight, std=0.1)
    return model


def check_tiny_path(path: str | os.PathLike) -> None:
    """Raise ConfigError unless `path` (model.name under model.init tiny) holds a model already
    (config.json) or the tiny model can be built there: nothing there yet, or an empty folder. The
    build renames its finished folder onto `path`, which fails on a file or on a folder holding
    anything, e.g. a run's folder CHECKPOINT_DIR/<run_name> where the stage has already taken its lock."""
    dest = Path(path)
    if (dest / "config.json").is_file() or not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return
    if dest.is_dir():
        held = sorted(p.name for p in dest.iterdir())
        what = f"a folder holding {', '.join(held[:3])}{', ...' if len(held) > 3 else ''} and no model (no config.json)"
    else:
        what = "a file, not a folder"
    raise ConfigError(
        f"model.name '{dest}' is where model.init tiny builds the tiny model, but it is {what}; point "
        "model.name at a path of its own (not a run's folder under CHECKPOINT_DIR, where the stages write), "
        f"e.g. {override('model.name=.cache/tiny-qwen3')}."
    )


def ensure_tiny_model(path: str | os.PathLike, seed: int = 0) -> Path:
    """Build the tiny model at `path` unless it is already there. Atomic: built aside, then renamed.
    Raises ConfigError where `path` is taken by something else (check_tiny_path)."""
    import torch

    dest = Path(path)
    if (dest / "config.json").is_file():
        return dest
    check_tiny_path(dest)
    log.info("building the tiny Qwen3 model and tokenizer at %s", dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        # On a random stream of its own: the stage that builds the model on first use has seeded
        # torch already, and drawing the weights from that stream made the first run on a fresh
        # volume train differently (another LoRA init) from every later run of the same command.
        with torch.random.fork_rng(devices=[]):
            tokenizer = build_tokenizer()
            model = build_model(len(tokenizer) - 1, seed)  # all but the pad row (see PAD)
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
