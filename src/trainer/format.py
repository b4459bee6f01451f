"""The reasoning format of the reference recipe: tags, system prompt and chat template."""

from __future__ import annotations

from typing import Any

REASONING_START = "<start_working_out>"
REASONING_END = "<end_working_out>"
SOLUTION_START = "<SOLUTION>"
SOLUTION_END = "</SOLUTION>"
TAGS = [REASONING_START, REASONING_END, SOLUTION_START, SOLUTION_END]

SYSTEM_PROMPT = (
    "You are given a problem.\n"
    "Think about the problem and provide your working out.\n"
    f"Place it between {REASONING_START} and {REASONING_END}.\n"
    f"Then, provide your solution between {SOLUTION_START}{SOLUTION_END}"
)

# System text + EOS, then each user text raw and each assistant text + EOS, with no role markers;
# the generation prompt opens the working-out so the model continues the reasoning.
CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + eos_token }}"
    "{% set loop_messages = messages[1:] %}"
    "{% else %}"
    "{{ " + repr(SYSTEM_PROMPT) + " + eos_token }}"
    "{% set loop_messages = messages %}"
    "{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + REASONING_START + "' }}{% endif %}"
)


def prompt_messages(problem: str) -> list[dict[str, str]]:
    """The conversation a model is asked to continue for one problem."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": problem}]


def render_solution(working: str, answer: str) -> str:
    """An assistant turn in the format (the generation prompt's tag included)."""
    return f"{REASONING_START}{working}{REASONING_END}{SOLUTION_START}{answer}{SOLUTION_END}"


def apply_format(tokenizer: Any, add_tokens: bool = False) -> int:
    """Install the chat template on `tokenizer`; with `add_tokens`, add the tags it lacks.

    Tags are added as ordinary (not special) tokens: TRL decodes completions with
    `skip_special_tokens=True`, which would otherwise strip them before the rewards see them.
    Returns how many tokens were added (the caller resizes the embeddings).
    """
    tokenizer.chat_template = CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not add_tokens:
        return 0
    vocab = tokenizer.get_vocab()
    missing = [t for t in TAGS if t not in vocab]
    return tokenizer.add_tokens(missing) if missing else 0
