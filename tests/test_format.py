"""The chat template renders exactly the reference recipe's string, on any tokenizer."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from trainer.format import SYSTEM_PROMPT, TAGS, apply_format, prompt_messages, render_solution


def test_two_message_conversation_renders_exactly(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_format(tok)
    messages = [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<start_working_out>2+2=4<end_working_out><SOLUTION>4</SOLUTION>"},
    ]
    expected = (
        "You are given a problem.\nThink about the problem and provide your working out.\n"
        "Place it between <start_working_out> and <end_working_out>.\n"
        "Then, provide your solution between <SOLUTION></SOLUTION><|endoftext|>"
        "What is 2+2?"
        "<start_working_out>2+2=4<end_working_out><SOLUTION>4</SOLUTION><|endoftext|>"
    )
    assert tok.apply_chat_template(messages, tokenize=False) == expected


def test_generation_prompt_opens_the_working_out(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_format(tok)
    text = tok.apply_chat_template(prompt_messages("Q?"), tokenize=False, add_generation_prompt=True)
    assert text == SYSTEM_PROMPT + "<|endoftext|>Q?<start_working_out>"


def test_tags_are_single_tokens_that_survive_decoding(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = render_solution("1+1=2", "2") + tok.eos_token
    ids = tok(text, add_special_tokens=False)["input_ids"]
    for tag in TAGS:
        assert len(tok(tag, add_special_tokens=False)["input_ids"]) == 1
    # TRL decodes completions with skip_special_tokens=True: the tags must stay, EOS must go.
    assert tok.decode(ids, skip_special_tokens=True) == render_solution("1+1=2", "2")


def test_add_tokens_only_where_missing(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert apply_format(tok, add_tokens=True) == 0  # the tiny tokenizer has them all
    before = len(tok)
    tok2 = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok2.add_tokens(["<other>"])
    assert len(tok2) == before + 1
