"""Reward functions for GRPO, built on the answer checker shared with evaluation (trainer.answers).

Two reward sets share names and scale:

- ``seed``: the reference recipe (Unsloth's Qwen3-4B GRPO notebook), reproduced score for score,
  defects included, so a run can be compared with the recipe it came from.
- ``default``: the same rewards with the seed's known defects fixed; correctness is decided by
  :func:`answers_equivalent` (symbolic equivalence through math-verify, behind fast paths and guards).

Every reward callable has TRL's signature ``f(prompts, completions, **kwargs) -> list[float | None]``,
takes the dataset column ``answer`` as a kwarg, and scores a completion that makes it raise with
``error_score`` (logged) instead of failing the whole batch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from trainer.answer_parsing import _number_value

# answers_equivalent is re-exported (and kept in __all__): the product's documented API is
# trainer.rewards.answers_equivalent; it lives in trainer.answers, beside the extraction it is used with.
from trainer.answers import answers_equivalent, formatted_answer, seed_format_regex, strict_format_regex
from trainer.errors import ConfigError
from trainer.format import REASONING_END, SOLUTION_END, SOLUTION_START

logger = logging.getLogger(__name__)

__all__ = [
    "REWARD_SETS",
    "RewardFunction",
    "answers_equivalent",
    "build_reward_funcs",
    "reward_names",
]


# ---------------------------------------------------------------------------------------------
# Reward functions
# ---------------------------------------------------------------------------------------------


class _Format:
    """The compiled format regexes for one EOS token (picklable: patterns pickle by source)."""

    def __init__(self, eos_token: str | None) -> None:
        self.seed = seed_format_regex(eos_token)
        self.strict = strict_format_regex(eos_token)


Scorer = Callable[[str, Any, _Format], float]


def _seed_match_format_exactly(text: str, answer: Any, fmt: _Format) -> float:
    """+3.0 when the completion matches the notebook's format regex, else 0.

    >>> f, = build_reward_funcs("seed", ["match_format_exactly"], eos_token="</s>", error_score=0.0)
    >>> f(None, ["x<end_working_out><SOLUTION>4</SOLUTION></s>", "<SOLUTION>4</SOLUTION>"])
    [3.0, 0.0]
    """
    return 3.0 if fmt.seed.search(text) is not None else 0.0


def _match_format_approximately(text: str, answer: Any, fmt: _Format) -> float:
    """+0.5 for each of ``<end_working_out>``, ``<SOLUTION>``, ``</SOLUTION>`` seen exactly once, else -1.0.

    ``<start_working_out>`` is not counted: the generation prompt already holds it.

    >>> f, = build_reward_funcs("seed", ["match_format_approximately"], eos_token="</s>", error_score=0.0)
    >>> f(None, ["<end_working_out><SOLUTION>4</SOLUTION>", "<SOLUTION>4", "none"])
    [1.5, -1.5, -3.0]
    """
    return sum(0.5 if text.count(tag) == 1 else -1.0 for tag in (REASONING_END, SOLUTION_START, SOLUTION_END))


def _seed_check_answer(text: str, answer: Any, fmt: _Format) -> float:
    """The notebook's answer check: 5.0 exact, 3.5 equal after strip, ratio credit, penalties.

    No format match -2.0; ``float(guess)/float(answer)`` in [0.9, 1.1] +2.0, in [0.8, 1.2] +1.5,
    else -2.5; a guess or answer float() cannot read (or an answer of 0) -4.5.

    >>> f, = build_reward_funcs("seed", ["check_answer"], eos_token="</s>", error_score=0.0)
    >>> done = "<end_working_out><SOLUTION>{}</SOLUTION>"
    >>> f(None, [done.format(a) for a in ["10", " 10 ", "9.5", "8.5", "1,000", "x"]] + ["10"], answer=["10"] * 7)
    [5.0, 3.5, 2.0, 1.5, -4.5, -4.5, -2.0]
    """
    match = fmt.seed.search(text)
    if match is None:
        return -2.0
    guess = match.group(1)
    if guess == answer:
        return 5.0
    if guess.strip() == answer.strip():
        return 3.5
    try:
        ratio = float(guess) / float(answer)
    except Exception:  # the notebook's bare except: any failure is "unparseable"
        return -4.5
    if 0.9 <= ratio <= 1.1:
        return 2.0
    if 0.8 <= ratio <= 1.2:
        return 1.5
    return -2.5


_SEED_NUMBER = re.compile(SOLUTION_START + r".*?[\s]{0,}([-]?[\d\.\,]{1,})", flags=re.MULTILINE | re.DOTALL)


def _seed_check_numbers(text: str, answer: Any, fmt: _Format) -> float:
    """The notebook's number check: the first number after ``<SOLUTION>``, commas removed.

    None -2.5; ``float`` equal to the answer +3.5; different -1.5; a float() failure 0.

    >>> f, = build_reward_funcs("seed", ["check_numbers"], eos_token="</s>", error_score=0.0)
    >>> f(None, ["<SOLUTION>1,000</SOLUTION>", "<SOLUTION>999", "<SOLUTION>none", "<SOLUTION>."], answer=["1000"] * 4)
    [3.5, -1.5, -2.5, 0.0]
    """
    match = _SEED_NUMBER.search(text)
    if match is None:
        return -2.5
    try:
        reference = float(answer.strip())
        guess = float(match.group(1).strip().replace(",", ""))
    except Exception:  # the notebook's bare except
        return 0.0
    return 3.5 if guess == reference else -1.5


def _match_format_exactly(text: str, answer: Any, fmt: _Format) -> float:
    """+3.0 when the completion follows the format (one solution block, ending the text, holding an
    answer: `holds_answer`), else 0.

    >>> f, = build_reward_funcs("default", ["match_format_exactly"], eos_token="</s>", error_score=0.0)
    >>> f(None, ["x<end_working_out><SOLUTION>4</SOLUTION></s>", "x<end_working_out><SOLUTION>4</SOLUTION>\\nP.S."])
    [3.0, 0.0]
    """
    return 3.0 if formatted_answer(text, fmt.strict) is not None else 0.0


def _closeness(guess: Fraction, reference: Fraction) -> float:
    """The notebook's ratio tiers as relative error, so sign flips and a zero answer are handled."""
    if reference == 0:
        return -2.5
    error = abs(guess - reference) / abs(reference)
    if error <= Fraction(1, 10):
        return 2.0
    if error <= Fraction(2, 10):
        return 1.5
    return -2.5


def _check_answer(text: str, answer: Any, fmt: _Format) -> float:
    """Answer check with the seed's scale: 5.0 equivalent, 3.5 equivalent but padded, near-miss credit.

    No format -2.0; equivalent (:func:`answers_equivalent`) 5.0, or 3.5 with surrounding whitespace;
    a number within 10% (20%) of a numeric answer +2.0 (+1.5); other wrong answers -2.5, or -4.5
    when the answer is a number and the guess is not.

    >>> f, = build_reward_funcs("default", ["check_answer"], eos_token="</s>", error_score=0.0)
    >>> done = "<end_working_out><SOLUTION>{}</SOLUTION>"
    >>> f(None, [done.format(a) for a in ["1,000", "\\\\frac{2000}{2}", " 1000 ", "-1000", "950", "x"]], answer=["1000"] * 6)
    [5.0, 5.0, 3.5, -2.5, 2.0, -4.5]
    """
    guess = formatted_answer(text, fmt.strict)
    if guess is None:
        return -2.0
    reference = str(answer)
    if answers_equivalent(guess, reference):
        return 5.0 if guess == guess.strip() else 3.5
    guess_value, reference_value = _number_value(guess), _number_value(reference)
    if guess_value is not None and reference_value is not None:
        return _closeness(guess_value, reference_value)
    if reference_value is not None:
        return -4.5
    return -2.5


_FIRST_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def _check_numbers(text: str, answer: Any, fmt: _Format) -> float:
    """Number check with the seed's scale: +3.5 when the solution (or its first number) is equivalent.

    Reads the text after the first ``<SOLUTION>`` (up to ``</SOLUTION>`` when present, so a truncated
    completion still counts); none -2.5; equivalent +3.5; otherwise -1.5 (-2.5 if it holds no number).

    >>> f, = build_reward_funcs("default", ["check_numbers"], eos_token="</s>", error_score=0.0)
    >>> f(None, ["<SOLUTION>2,125</SOLUTION>", "<SOLUTION>2.125", "<SOLUTION>It is 2125.", "x"], answer=["2125"] * 4)
    [3.5, -1.5, 3.5, -2.5]
    """
    start = text.find(SOLUTION_START)
    if start < 0:
        return -2.5
    body = text[start + len(SOLUTION_START) :]
    end = body.find(SOLUTION_END)
    body = body if end < 0 else body[:end]
    reference = str(answer)
    if body.strip() and answers_equivalent(body, reference):
        return 3.5
    number = _FIRST_NUMBER.search(body)
    if number is None:
        return -2.5
    return 3.5 if answers_equivalent(number.group(0), reference) else -1.5


# Reward set -> reward name -> per-completion scorer (text, answer, format) -> float.
REWARD_SETS: dict[str, dict[str, Scorer]] = {
    "seed": {
        "match_format_exactly": _seed_match_format_exactly,
        "match_format_approximately": _match_format_approximately,
        "check_answer": _seed_check_answer,
        "check_numbers": _seed_check_numbers,
    },
    "default": {
        "match_format_exactly": _match_format_exactly,
        "match_format_approximately": _match_format_approximately,
        "check_answer": _check_answer,
        "check_numbers": _check_numbers,
    },
}
# Rewards that compare with the dataset's answer column (the others ignore it).
_NEEDS_ANSWER = {"check_answer", "check_numbers"}


def reward_names(reward_set: str) -> list[str]:
    """The valid reward names of a set; raises ConfigError for an unknown set."""
    if reward_set not in REWARD_SETS:
        raise ConfigError(f"unknown reward set {reward_set!r}; valid sets: {', '.join(sorted(REWARD_SETS))}")
    return list(REWARD_SETS[reward_set])


def _completion_text(completion: Any) -> str:
    """The text of a completion: a plain string, or the assistant content of a conversational one."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content") or "")
    if isinstance(completion, Sequence):
        # TRL passes [{"role": "assistant", "content": ...}]; join assistant turns if there are several.
        return "".join(
            str(m.get("content") or "")
            for m in completion
            if isinstance(m, dict) and m.get("role", "assistant") == "assistant"
        )
    raise TypeError(f"unsupported completion type {type(completion).__name__}")


class RewardFunction:
    """One reward as a TRL reward function: scores each completion, isolating failures.

    A completion whose scoring raises gets ``error_score`` and a logged warning with its input; the
    rest of the batch keeps real scores. ``__name__`` is the reward name, which TRL uses to log
    ``rewards/<name>/mean``. Picklable (no closures).
    """

    def __init__(self, name: str, scorer: Scorer, eos_token: str | None, error_score: float | None) -> None:
        self.__name__ = name
        self.name = name
        self.scorer = scorer
        self.fmt = _Format(eos_token)
        self.error_score = error_score
        self.__doc__ = scorer.__doc__

    def __repr__(self) -> str:
        return f"RewardFunction({self.name!r})"

    def __call__(self, prompts: Any = None, completions: Any = None, **kwargs: Any) -> list[float | None]:
        completions = list(completions or [])
        answers = kwargs.get("answer")
        if answers is None:
            if self.name in _NEEDS_ANSWER:
                raise ValueError(f"reward {self.name!r} needs the dataset column 'answer' (got none)")
            answers = [None] * len(completions)
        scores: list[float | None] = []
        correct = 0
        for completion, answer in zip(completions, answers, strict=True):
            try:
                score = float(self.scorer(_completion_text(completion), answer, self.fmt))
            except Exception:
                logger.warning(
                    "reward %s raised on a completion; scoring it %s. completion=%r answer=%r",
                    self.name,
                    self.error_score,
                    completion,
                    answer,
                    exc_info=True,
                )
                score = self.error_score
            scores.append(score)
            if self.name == "check_answer" and score is not None and score >= 5.0 - 1.5:
                correct += 1  # 5.0 or 3.5: the answer was right
        log_metric = kwargs.get("log_metric")
        if self.name == "check_answer" and callable(log_metric) and completions:
            # Accuracy apart from the shaped reward: the share of completions with a right answer.
            log_metric("accuracy", correct / len(completions))
        return scores


def build_reward_funcs(
    reward_set: str, names: list[str], eos_token: str | None, error_score: float | None
) -> list[RewardFunction]:
    """The TRL reward callables for ``names`` from ``reward_set`` ("seed" or "default").

    >>> [f.__name__ for f in build_reward_funcs("default", ["check_answer"], eos_token="</s>", error_score=-1.0)]
    ['check_answer']
    """
    valid = reward_names(reward_set)
    unknown = [n for n in names if n not in REWARD_SETS[reward_set]]
    if unknown:
        raise ConfigError(
            f"unknown reward name(s) {', '.join(map(repr, unknown))} for reward set {reward_set!r}; "
            f"valid names: {', '.join(valid)}"
        )
    return [RewardFunction(n, REWARD_SETS[reward_set][n], eos_token, error_score) for n in names]
