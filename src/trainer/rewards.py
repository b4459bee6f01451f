"""Reward functions for GRPO and the answer checker shared with evaluation.

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
import signal
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

from trainer.errors import ConfigError
from trainer.format import REASONING_END, SOLUTION_END, SOLUTION_START

logger = logging.getLogger(__name__)

__all__ = [
    "REWARD_SETS",
    "RewardFunction",
    "answers_equivalent",
    "build_reward_funcs",
    "extract_solution",
    "follows_format",
    "reward_names",
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
    ``</SOLUTION> ... <SOLUTION>`` to find a later end). The answer must hold a non-space character:
    the seed pays format credit for ``<SOLUTION> </SOLUTION>``, an answer that is not there.
    """
    tempered = rf"(?:(?!{_ANY_SOL_TAG}).)"
    visible = rf"(?:(?!{_ANY_SOL_TAG})\S)"
    return re.compile(
        rf"{_END}{tempered}*?{_SOL}({tempered}*?{visible}{tempered}*?){_SOL_END}\s*{_eos_part(eos_token)}\s*\Z",
        flags=re.DOTALL,
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
    return pattern.search(text) is not None


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

# Markdown emphasis ("**73**") is a delimiter too: models trained on chat data bold their answers.
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("__", "__"), ("*", "*"))
_WRAPPER_CMDS = ("\\boxed{", "\\fbox{", "\\text{", "\\textbf{", "\\mathrm{", "\\mathbf{")

_DECIMAL = re.compile(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,4}))?")
_THOUSANDS = re.compile(r"([+-]?)([1-9]\d{0,2}(?:,\d{3})+|[1-9]\d{0,2}(?: \d{3})+)(\.\d+)?")
_MIXED = re.compile(r"([+-]?)(\d+)\s+(\d+)\s*/\s*(\d+)")
_FRACTION = re.compile(r"([+-]?)(\d+)\s*/\s*(\d+)")
_LATEX_FRACTION = re.compile(r"([+-]?)(?:(\d+)\s*)?\\[dtc]?frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))")
# A single comma between digits that cannot be a thousands separator ("1,5", "0,111"): a decimal
# comma or a two-element list, depending on the writer.
_DECIMAL_COMMA = re.compile(r"([+-]?)(\d+),(\d+)")
_SCIENTIFIC_TIMES = re.compile(r"([+-]?\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*([+-]?\d{1,4})\s*\}?")
_UNIT_TAIL = re.compile(r"\s*\\(?:text|mbox|textnormal|mathrm)\s*\{\s*[A-Za-z .]*\}\s*$")
_WORD_TAIL = re.compile(r"([+-]?[\d.,]*\d)\s*([A-Za-z]{2,}\.?(?:\s+[A-Za-z]{2,}\.?){0,2})")
# Two-letter words read as units; other two-letter words are more likely variables ("5 ab").
_SHORT_UNITS = {"cm", "mm", "km", "kg", "mg", "ft", "in", "ml", "mi", "hr", "yd", "oz", "lb", "mph", "am", "pm"}
_NOT_UNITS = {"pi", "and", "or", "sin", "cos", "tan", "log", "ln", "exp", "sqrt"}


def _is_unit_tail(words: str) -> bool:
    """Whether the words after a number read as a unit ("dollars", "square feet"), not math."""
    parts = [w.rstrip(".").lower() for w in words.split()]
    return all(w not in _NOT_UNITS and (len(w) > 2 or w in _SHORT_UNITS) for w in parts)


_WORDS = re.compile(r"[A-Za-z]{2,}[\s,.:]+[A-Za-z]{2,}")


def _unwrap(s: str) -> str:
    """Strip whitespace, math delimiters, markdown emphasis, a final period and a whole-string ``\\boxed{}``-like wrapper."""
    for _ in range(8):
        before = s
        s = s.strip()
        s = s.removesuffix(".").rstrip() if not s.endswith("..") else s
        for left, right in _DELIMITERS:
            if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)].strip()
                break
        for cmd in _WRAPPER_CMDS:
            if s.startswith(cmd) and s.endswith("}") and _closing_brace(s, len(cmd) - 1) == len(s) - 1:
                s = s[len(cmd) : -1].strip()
                break
        if s == before:
            break
    return s


def _closing_brace(s: str, open_at: int) -> int:
    """Index of the brace closing the one at ``open_at``, or -1."""
    depth = 0
    for i in range(open_at, len(s)):
        if s[i] == "{":
            depth += 1
        elif s[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _number_text(s: str) -> str:
    """Answer text with number formatting noise removed: ``\\!``, ``{,}``, ``\\$``, a trailing unit."""
    s = _unwrap(s)
    s = s.replace("\\!", "").replace("{,}", ",").replace("\\,", "").replace("\\ ", " ")
    s = s.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
    s = _UNIT_TAIL.sub("", s).strip()
    # "10 dollars", "12 ways": a number followed by unit words (not "pi", not one-letter variables).
    if (m := _WORD_TAIL.fullmatch(s)) and _is_unit_tail(m.group(2)):
        s = m.group(1)
    return s


def _sign(sign: str, value: Fraction) -> Fraction:
    return -value if sign == "-" else value


def _parse_number(s: str, allow_fraction: bool = True) -> tuple[Fraction, str] | None:
    """An exact value for a plain number, with its kind: 'decimal', 'fraction' or 'comma' (decimal comma).

    Handles ``1,000``, ``1 000``, ``.5``, ``1e3``, ``1.5 \\times 10^{3}``, ``3/4``, ``\\frac{3}{4}``,
    ``\\dfrac34``, mixed numbers ``2 1/2`` and ``2\\frac{1}{2}``; anything else is None (left to the
    symbolic path). Never parses thousands-looking commas as decimals: ``2,125`` is 2125.
    """
    if len(s) > 200:
        return None
    try:
        if m := _DECIMAL.fullmatch(s):
            exponent = int(m.group(3) or 0)
            if abs(exponent) > 400:  # 1e-9999: not an answer anyone means; keep the exact value small
                return None
            return _sign(m.group(1), Fraction(Decimal(m.group(2)) * (Decimal(10) ** exponent))), "decimal"
        if m := _THOUSANDS.fullmatch(s):
            digits = m.group(2).replace(",", "").replace(" ", "") + (m.group(3) or "")
            return _sign(m.group(1), Fraction(Decimal(digits))), "decimal"
        if m := _SCIENTIFIC_TIMES.fullmatch(s):
            return Fraction(Decimal(m.group(1)) * Decimal(10) ** int(m.group(2))), "decimal"
        if m := _DECIMAL_COMMA.fullmatch(s):
            return _sign(m.group(1), Fraction(Decimal(f"{m.group(2)}.{m.group(3)}"))), "comma"
        if not allow_fraction:
            return None
        if m := _MIXED.fullmatch(s):
            whole, num, den = int(m.group(2)), int(m.group(3)), int(m.group(4))
            if den == 0 or num >= den:  # "4 7/6" or "4 0/0" is not a mixed number
                return None
            return _sign(m.group(1), whole + Fraction(num, den)), "fraction"
        if m := _FRACTION.fullmatch(s):
            if int(m.group(3)) == 0:
                return None
            return _sign(m.group(1), Fraction(int(m.group(2)), int(m.group(3)))), "fraction"
        if m := _LATEX_FRACTION.fullmatch(s):
            num, den = int(m.group(3) or m.group(4)), int(m.group(5) or m.group(6))
            if den == 0:
                return None
            value = Fraction(num, den)
            if m.group(2) is not None:
                if num >= den:
                    return None
                value += int(m.group(2))
            return _sign(m.group(1), value), "fraction"
    except (InvalidOperation, ValueError, ZeroDivisionError, OverflowError):
        return None
    return None


_INFINITY = {"\\infty": Fraction(10**400), "+\\infty": Fraction(10**400), "-\\infty": Fraction(-(10**400))}
_BRACKETED = re.compile(r"(\(|\[|\\\{)(.*)(\)|\]|\\\})", flags=re.DOTALL)


def _parse_bracketed(s: str) -> tuple[str, list[tuple[tuple[Fraction, str], str]], str] | None:
    """A tuple, interval or set of plain numbers (``(1, 2]``, ``\\{3, 5\\}``) as (open, elements, close).

    Lets the common all-numeric cases skip SymPy; anything else (symbols, nesting) is None.
    """
    m = _BRACKETED.fullmatch(s)
    if m is None or any(c in m.group(2) for c in "()[]{}"):
        return None
    elements = []
    for part in m.group(2).split(","):
        part = part.strip()
        if part in _INFINITY:
            elements.append(((_INFINITY[part], "infinity"), part))
        elif (parsed := _parse_number(part, allow_fraction=True)) is not None and parsed[1] != "comma":
            elements.append((parsed, part))
        else:
            return None
    if len(elements) < 2:
        return None
    return m.group(1), elements, m.group(3)


def _bracketed_equal(pred: str, ref: str) -> bool | None:
    """Equality of two all-numeric tuples/intervals/sets, or None when either is not one."""
    p, r = _parse_bracketed(pred), _parse_bracketed(ref)
    if p is None or r is None:
        return None
    p_set, r_set = p[0] == "\\{", r[0] == "\\{"
    if p_set != r_set:
        return None  # a set against a tuple or interval: math-verify's call
    if p_set:  # order-insensitive, duplicates ignored
        return all(any(_numbers_equal(a, b, at, bt) for b, bt in r[1]) for a, at in p[1]) and all(
            any(_numbers_equal(a, b, at, bt) for a, at in p[1]) for b, bt in r[1]
        )
    if (p[0], p[2]) != (r[0], r[2]) or len(p[1]) != len(r[1]):
        return False  # (3,4] vs (3,4): different intervals; (1,2) vs (1,2,3): different tuples
    return all(_numbers_equal(a, b, at, bt) for (a, at), (b, bt) in zip(p[1], r[1], strict=True))


def _significant_digits(text: str) -> int:
    digits = re.sub(r"[^0-9]", "", text.split("e")[0].split("E")[0]).lstrip("0")
    return len(digits)


def _numbers_equal(pred: tuple[Fraction, str], ref: tuple[Fraction, str], pred_s: str, ref_s: str) -> bool:
    """Exact equality, except a decimal of 4+ significant digits matches a fraction it rounds ("1/3" ~ 0.3333)."""
    (p, p_kind), (r, r_kind) = pred, ref
    if p == r:
        return True
    kinds = {p_kind, r_kind}
    if kinds != {"fraction", "decimal"}:
        return False
    dec_value, dec_text, frac_value = (p, pred_s, r) if p_kind == "decimal" else (r, ref_s, p)
    if "e" in dec_text.lower() or _significant_digits(dec_text) < 4 or "." not in dec_text:
        return False
    places = len(dec_text.split(".")[1])
    scaled = frac_value * 10**places
    # Accept rounding or truncation to the decimal's own number of places.
    candidates = {Fraction(round(scaled), 10**places), Fraction(int(scaled), 10**places)}
    return dec_value in candidates


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
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    # Timeouts are ours (_with_deadline): math-verify's own use signal.alarm, which needs the main
    # thread and whole seconds.
    gold = parse(_prepare(ref), configs, parsing_timeout=None)  # type: ignore[arg-type]
    target = parse(_prepare(pred), configs, parsing_timeout=None)  # type: ignore[arg-type]
    if not gold or not target or _read_partly(ref, gold) or _read_partly(pred, target):
        return False
    if not verify(gold, target, timeout_seconds=None):
        return False
    # math-verify rounds numbers to 6 decimal places, so 0.0000672 "equals" 0.0000671; require the
    # values (when both are plain numbers) to be equal when both are rational, else to agree to a
    # relative 1e-6. No absolute tolerance: 2^-98 and 2^-99 are both below any fixed one.
    if getattr(gold[0], "is_Rational", False) and getattr(target[0], "is_Rational", False):
        return bool(gold[0] == target[0])
    g, t = _numeric_value(gold[0]), _numeric_value(target[0])
    if g is not None and t is not None:
        return abs(g - t) <= 1e-6 * max(abs(g), abs(t))
    return True


def _read_partly(text: str, parsed: list[Any]) -> bool:
    """Whether math-verify read only the start of an answer meant as one expression.

    Its LaTeX reader stops at the first thing it does not know (``1 - \\frac{1}{\\mathrm{x}}`` is read
    as ``1 - \\frac{1}{``, then as 1): comparing that prefix would judge an answer the parser never
    read. A sentence (the answer found inside it) is not one expression and is left alone.
    """
    prepared = _prepare(text)
    if not (prepared.startswith("$") and prepared.endswith("$")) or len(parsed) < 2:
        return False
    whole, matched = (re.sub(r"\s+", "", x) for x in (prepared.strip("$"), str(parsed[-1])))
    # A unit the parser drops on purpose ("15\\mbox{ cm}^2") is not a part left unread.
    return whole.startswith(matched) and not _DROPPED_UNIT.fullmatch(whole[len(matched) :])


_DROPPED_UNIT = re.compile(r"(?:\\(?:text|mbox|textnormal|mathrm)\{[A-Za-z]{2,}[A-Za-z.]*\}(?:\^\{?\d\}?)?)*")


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
    (``**73**``) and math delimiters around the whole answer are ignored. A bare list may be joined
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


def _number_value(text: str) -> Fraction | None:
    """A plain number's exact value (see _parse_number), or None."""
    parsed = _parse_number(_number_text(text))
    return parsed[0] if parsed else None


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
    """+3.0 when the completion follows the format (one solution block, ending the text), else 0.

    >>> f, = build_reward_funcs("default", ["match_format_exactly"], eos_token="</s>", error_score=0.0)
    >>> f(None, ["x<end_working_out><SOLUTION>4</SOLUTION></s>", "x<end_working_out><SOLUTION>4</SOLUTION>\\nP.S."])
    [3.0, 0.0]
    """
    return 3.0 if fmt.strict.search(text) is not None else 0.0


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
    if fmt.strict.search(text) is None:
        return -2.0
    guess = extract_solution(text)
    if guess is None:  # unreachable when the format matched; kept for safety
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
