"""Answers: extracting the final answer from a completion, and deciding whether two answers are the
same. One checker, imported by both the GRPO rewards (trainer.rewards) and evaluation
(trainer.evaluate, trainer.infer), so the training signal and the reported metric cannot drift.

- Extract: ``extract_solution`` (the answer inside ``<SOLUTION>...</SOLUTION>``), ``follows_format``
  and the format regexes the format rewards use.
- Normalise: trainer.answer_parsing (unwrapping, number parsing, brackets: the fast paths).
- Compare: ``answers_equivalent``: text, then exact numbers, then brackets, then symbolic
  equivalence through math-verify, behind cost guards and a SIGALRM deadline.
"""

from __future__ import annotations

import logging
import re
import signal
import string
import threading
import unicodedata
from collections.abc import Callable
from fractions import Fraction
from typing import Any

from trainer.answer_parsing import (
    _bracketed_equal,
    _number_text,
    _numbers_equal,
    _parse_number,
    _unwrap,
)
from trainer.format import REASONING_END, SOLUTION_END, SOLUTION_START

logger = logging.getLogger(__name__)

__all__ = [
    "answers_equivalent",
    "extract_solution",
    "follows_format",
    "formatted_answer",
    "holds_answer",
    "seed_format_regex",
    "strict_format_regex",
]


# ---------------------------------------------------------------------------------------------
# Format: extraction and adherence
# ---------------------------------------------------------------------------------------------

_END, _SOL, _SOL_END = (re.escape(t) for t in (REASONING_END, SOLUTION_START, SOLUTION_END))
# Any solution tag; used to keep a "strict" capture from spanning two solution blocks.
_ANY_SOL_TAG = rf"(?:{_SOL}|{_SOL_END})"


def _eos_part(eos_token: str | None) -> str:
    return f"(?:{re.escape(eos_token)})?" if eos_token else ""


def seed_format_regex(eos_token: str | None) -> re.Pattern[str]:
    """The notebook's full-format regex, verbatim (MULTILINE: ``$`` also matches at any line end)."""
    return re.compile(
        rf"{_END}.*?{_SOL}(.+?){_SOL_END}[\s]{{0,}}{_eos_part(eos_token)}[\s]{{0,}}$",
        flags=re.MULTILINE | re.DOTALL,
    )


def strict_format_regex(eos_token: str | None) -> re.Pattern[str]:
    """The fixed full-format regex: one solution block, and it ends the text.

    Differences from the seed regex (both are defects there): ``$`` is the end of the text, not of
    any line (the seed accepts ``</SOLUTION>`` followed by more lines), and neither the gap before
    ``<SOLUTION>`` nor the answer may contain a solution tag (the seed's lazy ``(.+?)`` stretches over
    ``</SOLUTION> ... <SOLUTION>`` to find a later end). Whether the captured answer holds anything is
    `holds_answer`'s call, not the regex's.
    """
    tempered = rf"(?:(?!{_ANY_SOL_TAG}).)"
    return re.compile(
        rf"{_END}{tempered}*?{_SOL}({tempered}*?){_SOL_END}\s*{_eos_part(eos_token)}\s*\Z",
        flags=re.DOTALL,
    )


# LaTeX's spacing commands: they print nothing but space.
_LATEX_SPACE = re.compile(r"\\(?:q?quad|en(?:space|skip)|thinspace|medspace|thickspace|hspace\*?\{[^}]*\}|[,;:!> ])")


def holds_answer(answer: str) -> bool:
    """Whether a captured answer says anything: once unwrapped (math delimiters, markdown, ``\\boxed{}``,
    a final period) it holds a character other than whitespace, LaTeX spacing (``\\quad``) and
    punctuation (ASCII's, and Unicode's: ``—``, ``…``). The seed pays format credit for
    ``<SOLUTION> </SOLUTION>``, and ``$ $``, ``\\boxed{}`` or ``.`` are no answer either.

    >>> [holds_answer(a) for a in ["42", "\\\\infty", " ", "$ $", "\\\\boxed{}", "**", "?"]]
    [True, True, False, False, False, False, False]
    """
    text = _LATEX_SPACE.sub(" ", _unwrap(answer))
    return any(
        not c.isspace() and c not in string.punctuation and not unicodedata.category(c).startswith("P") for c in text
    )


_STRICT_NO_EOS = strict_format_regex(None)
_FIRST_SOLUTION = re.compile(rf"{_END}.*?{_SOL}(.*?){_SOL_END}", flags=re.DOTALL)


def follows_format(text: str, eos_token: str | None = None) -> bool:
    """Whether ``text`` follows the reasoning format (the default set's ``match_format_exactly`` regex).

    >>> follows_format("2+2 is 4<end_working_out><SOLUTION>4</SOLUTION>")
    True
    >>> follows_format("<end_working_out><SOLUTION>4</SOLUTION>\\nmore text")
    False
    """
    pattern = _STRICT_NO_EOS if not eos_token else strict_format_regex(eos_token)
    return formatted_answer(text, pattern) is not None


def formatted_answer(text: str, pattern: re.Pattern[str]) -> str | None:
    """The answer of a text that follows the format under `pattern` (a `strict_format_regex`), or
    None: where the text does not, or its answer holds nothing (`holds_answer`). Returned unstripped."""
    match = pattern.search(text)
    return match.group(1) if match is not None and holds_answer(match.group(1)) else None


def extract_solution(text: str) -> str | None:
    """The answer inside ``<SOLUTION>...</SOLUTION>`` after ``<end_working_out>``, or None.

    When the text follows the format this is the answer the format regex captures; otherwise it is
    the first complete solution block after ``<end_working_out>``. Returned unstripped.

    >>> extract_solution("work<end_working_out><SOLUTION>42</SOLUTION>")
    '42'
    >>> extract_solution("<SOLUTION>42</SOLUTION>") is None
    True
    """
    match = _STRICT_NO_EOS.search(text) or _FIRST_SOLUTION.search(text)
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------
# Answer equivalence
# ---------------------------------------------------------------------------------------------

# Inputs longer than this are not parsed (a hostile or runaway answer); they only match verbatim.
_MAX_PARSE_CHARS = 6_000
# Wall-clock bound on one symbolic comparison, enforced with SIGALRM in the main thread only.
_TIMEOUT_S = 1.5


def _too_costly(s: str) -> bool:
    """Whether symbolic evaluation of ``s`` could run away (power towers, huge powers or factorials, deep nesting).

    SymPy evaluates ``9^9^9`` eagerly in C, where no timeout can interrupt it, so such input is
    refused before parsing.
    """
    if "^" in s or "**" in s:
        compact = re.sub(r"\s+", "", s).replace("**", "^")
        # A tower: a caret inside a braced exponent (9^{9^9}), or right after a one-atom exponent (9^9^9).
        if re.search(r"\^\{[^{}]*\^", compact) or re.search(r"\^(?:[+-]?\d+|[A-Za-z]|\{[^{}]*\})\^", compact):
            return True
        # A power of a group that holds a power: fine for (x^2+1)^2, a tower for (9^9)^(9^9).
        for m in re.finditer(r"[)}]\^", compact):
            exponent = re.match(r"\{?(\d{1,3})\}?", compact[m.end() :])
            if "^" in compact[max(0, m.start() - 60) : m.start()] and not (exponent and int(exponent.group(1)) <= 100):
                return True
        for m in re.finditer(r"\^\{?\(?([+-]?\d+(?:\.\d+)?)", compact):
            if abs(float(m.group(1))) > 2000:
                return True
    if re.search(r"\d{4,}\s*!|\d{3,}\s*!\s*!|!\s*!\s*!", s):
        return True
    if re.search(r"\\binom\s*\{?\s*\d{5,}|\\(?:prod|sum)_", s):
        return True
    depth = max_depth = 0
    for ch in s:
        if ch in "{([":
            depth += 1
            max_depth = max(max_depth, depth)
        elif ch in "})]":
            depth -= 1
    return max_depth > 40


_WORDS = re.compile(r"[A-Za-z]{2,}[\s,.:]+[A-Za-z]{2,}")


def _latex_input(s: str) -> str:
    """The string handed to math-verify: bare LaTeX is wrapped in ``$...$``.

    math-verify only reads LaTeX inside delimiters or ``\\boxed{}``; a bare ``\\frac{1}{2}`` would
    otherwise go to its plain-expression reader and parse as garbage (or not at all).
    """
    if "\\boxed" in s or "\\(" in s or "\\[" in s or re.search(r"(?<!\\)\$", s):
        return s
    prose = re.sub(r"\\[A-Za-z]+\s*(\{[^{}]*\})?", " ", s)
    if _WORDS.search(prose):  # a sentence: let math-verify find the answer in it
        return s
    return f"${s}$"


# Math pieces joined into one list by commas or words: "$1$, $2$ and $3$".
_MATH_LIST = re.compile(r"\$[^$]+\$(?:\s*(?:,\s*)?(?:,|and|or|\\text\{\s*(?:and|or)\s*\})\s*\$[^$]+\$)+")


def _prepare(s: str) -> str:
    """Rewrite forms math-verify 0.9 misreads into ones it reads right."""
    stripped = _number_text(s)
    parsed = _parse_number(stripped)
    if parsed is not None and parsed[1] != "comma":  # "1,5" may be a list: leave it to math-verify
        value, kind = parsed
        if value.denominator == 1:
            return f"${value.numerator}$"
        if kind == "decimal":  # keep it a decimal: math-verify compares floats with rounding
            return f"${_decimal_text(value)}$"
        return f"$\\frac{{{value.numerator}}}{{{value.denominator}}}$"
    if _MATH_LIST.fullmatch(s.strip()):  # "$1$ and $2$": one list, not a sentence holding "$1$"
        return "$" + ", ".join(re.findall(r"\$([^$]+)\$", s)) + "$"
    # \mathrm{e} and \mathrm{i} (ISO style) are the constants math-verify reads as e and i.
    return _latex_input(re.sub(r"\\mathrm\{\s*([ei])\s*\}", r"\1", _unwrap(s)))


def _decimal_text(value: Fraction) -> str:
    """Exact positional text of a terminating decimal."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    places = 0
    while (value * 10**places).denominator != 1 and places < 2000:
        places += 1
    scaled = (value * 10**places).numerator
    digits = str(scaled).rjust(places + 1, "0")
    return f"{sign}{digits[:-places]}.{digits[-places:]}" if places else f"{sign}{digits}"


class _Deadline(BaseException):
    """Raised by SIGALRM; a BaseException so math-verify's ``except Exception`` does not swallow it."""


def _with_deadline(fn: Callable[[], bool], seconds: float) -> bool:
    """Run ``fn`` under a SIGALRM deadline when that is possible (main thread, no timer already set)."""
    usable = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    if usable and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        usable = False  # someone else's timer is running; do not clobber it
    if not usable:
        return fn()

    def on_alarm(signum: int, frame: Any) -> None:
        raise _Deadline

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _Deadline:
        logger.warning("answer comparison timed out after %.1fs", seconds)
        return False
    finally:
        signal.signal(signal.SIGALRM, previous)


def _numeric_value(expr: Any) -> complex | None:
    """A numeric value for a SymPy number, or None (not a number, or not cheaply evaluable)."""
    try:
        if getattr(expr, "is_number", False) and not getattr(expr, "free_symbols", True):
            value = complex(expr.evalf(20))
            return value
    except (TypeError, ValueError, OverflowError, AttributeError):
        return None
    return None


_warmed_up = False


def _no_timeout_warning(record: logging.LogRecord) -> bool:
    """Drop math-verify's "Timeout is disabled" warning: _symbolic_equal turns its timeouts off on
    purpose (ours are _with_deadline), and the warning came once per process and stage, telling the
    user to do what is already done. Its other messages pass."""
    return not record.getMessage().startswith("Timeout is disabled")


def _warm_up() -> None:
    """Build math-verify's parsers once outside any deadline (the first parse is slow, not hostile)."""
    global _warmed_up
    if not _warmed_up:
        _warmed_up = True
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_no_timeout_warning)
        _symbolic_equal("$\\frac{x}{2}+\\sqrt{3}$", "$(3,4] \\cup \\{1\\}$")


def _symbolic_equal(pred: str, ref: str) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, verify

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    # Timeouts are ours (_with_deadline): math-verify's own use signal.alarm, which needs the main
    # thread and whole seconds.
    ref, pred = _prepare(ref), _prepare(pred)
    gold, target = _parse(ref, configs), _parse(pred, configs)
    if not gold or not target or isinstance(gold[0], str) or isinstance(target[0], str):
        return False  # an answer the parser could not read equals only its own text (answers_equivalent)
    if not verify(gold, target, timeout_seconds=None):
        return False
    if {_collection(gold[0], ref), _collection(target[0], pred)} == {"set", "ordered"}:
        return False  # math-verify matches {1, 2} to the interval (1, 2) and to the tuple (2, 1)
    # math-verify rounds numbers to 6 decimal places, so 0.0000672 "equals" 0.0000671; require the
    # values (when both are plain numbers) to be equal when both are rational, else to agree to a
    # relative 1e-6. No absolute tolerance: 2^-98 and 2^-99 are both below any fixed one.
    if getattr(gold[0], "is_Rational", False) and getattr(target[0], "is_Rational", False):
        return bool(gold[0] == target[0])
    g, t = _numeric_value(gold[0]), _numeric_value(target[0])
    if g is not None and t is not None:
        return abs(g - t) <= 1e-6 * max(abs(g), abs(t))
    return True


def _collection(value: Any, text: str) -> str | None:
    """'set' for a set written in braces (``\\{1, 2\\}``), 'ordered' for a tuple, interval or union of
    intervals, else None. A bare list (``1, 2``) reads as a set too, but is left out: it is how many
    answers write a tuple's elements."""
    from sympy import FiniteSet, Interval, Tuple, Union

    if isinstance(value, FiniteSet) and "{" in text:
        return "set"
    return "ordered" if isinstance(value, (Interval, Tuple, Union)) else None


def _parse(prepared: str, configs: list[Any]) -> list[Any]:
    """math-verify's reading of a prepared answer: [value, matched text], or [text] where it read no value.

    One expression is read whole or not at all (extraction_mode first_match): where its LaTeX reader
    fails on the whole (``1 + \\operatorname{sgn}(x)``), math-verify's default goes on to a smaller
    match inside it (the ``1``) and would compare that as the answer. A sentence is searched for the
    answer it holds, as math-verify does by default.
    """
    from math_verify import parse

    one_expression = prepared.startswith("$") and prepared.endswith("$")  # as _prepare gives it
    mode = "first_match" if one_expression else "any_match"
    return parse(prepared, configs, parsing_timeout=None, extraction_mode=mode)  # type: ignore[arg-type]


def _normalized_text(s: str) -> str:
    return re.sub(r"\s+", "", _unwrap(s))


def answers_equivalent(predicted: str, reference: str) -> bool:
    """Whether two final answers are mathematically the same.

    Plain numbers (thousands separators, decimals, scientific notation, fractions, mixed numbers)
    are compared exactly without SymPy; everything else (LaTeX, radicals, sets, intervals, tuples,
    equations, units, percentages) goes to math-verify with the reference as gold. Bounded: long or
    explosive input is only compared as text, and in the main thread a 1.5 s deadline applies.

    Rules worth knowing: values are equal exactly (rationals) or to a relative 1e-6, never to an
    absolute tolerance, so tiny values stay distinct; an answer meant as one expression that the
    parser reads only the start of is not equal to anything but its own text; markdown emphasis
    (``**73**``) and math delimiters around the whole answer are ignored, and so is emphasis around a
    number that a unit follows (``**73** cm`` is 73, ``**73** or 74`` no number). A bare list may be joined
    by commas, "and" or "or" (``1, 2 and 3``, ``1, 2, and 3``, ``$1$ and $2$``): it is the set of its
    elements, so order and the joining words do not matter; a tuple or interval in brackets keeps
    its order and its brackets.

    >>> answers_equivalent("\\\\dfrac12", "0.5")
    True
    >>> answers_equivalent("1,000", "1000")
    True
    >>> answers_equivalent("2.125", "2,125")
    False
    >>> answers_equivalent("1, 2 and 3", "3, 2, 1")
    True
    """
    if predicted is None or reference is None:
        return False
    predicted, reference = str(predicted), str(reference)
    if not predicted.strip() or not reference.strip():
        return False
    if _normalized_text(predicted) == _normalized_text(reference):
        return True
    if len(predicted) > _MAX_PARSE_CHARS or len(reference) > _MAX_PARSE_CHARS:
        return False
    pred_text, ref_text = _number_text(predicted), _number_text(reference)
    pred_num, ref_num = _parse_number(pred_text), _parse_number(ref_text)
    if pred_num is not None and ref_num is not None:
        if _numbers_equal(pred_num, ref_num, pred_text, ref_text):
            return True
        if not (pred_num[1] == ref_num[1] == "comma"):
            return False
        # "1,2" and "2,1": unequal as decimal commas, but maybe equal as lists; ask math-verify.
    if (same := _bracketed_equal(pred_text, ref_text)) is not None:
        return same
    if _too_costly(predicted) or _too_costly(reference):
        return False
    try:
        _warm_up()
        return _with_deadline(lambda: _symbolic_equal(predicted, reference), _TIMEOUT_S)
    except RecursionError:
        return False
