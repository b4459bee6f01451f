"""Reading an answer's text (the normalising half of trainer.answers): math delimiters, markdown
emphasis and ``\\boxed{}``-like wrappers unwrapped, number formatting noise and trailing units
dropped, plain numbers (decimals, thousands separators, scientific notation, fractions, mixed
numbers) parsed to exact values, and bracketed tuples / intervals compared element by element.
No SymPy here: these are the fast paths that answers_equivalent takes before math-verify."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

# Markdown emphasis ("**73**") and code ("`73`") are delimiters too: models trained on chat data
# bold their answers or set them as code.
_DELIMITERS = (
    ("$$", "$$"),
    ("$", "$"),
    ("\\(", "\\)"),
    ("\\[", "\\]"),
    ("**", "**"),
    ("__", "__"),
    ("*", "*"),
    ("`", "`"),
)
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
# A unit word may carry a power and a per-unit ("cm^2", "ft²", "km/h"); the number may be a fraction ("1/4 cup", "2 1/2 cups").
_POWER = r"(?:\^\{?[23]\}?|[²³])?"
_UNIT_WORD = rf"[A-Za-z]{{2,}}{_POWER}(?:/[A-Za-z]+{_POWER})?\.?"
_WORD_TAIL = re.compile(rf"([+-]?(?:\d+\s+)?[\d.,]*\d(?:/\d+)?)\s*({_UNIT_WORD}(?:\s+{_UNIT_WORD}){{0,2}})")
# Degrees after a number: the sign models write ("90°", "5 °C") or LaTeX's ("90^\circ").
_DEGREE_TAIL = re.compile(r"(?<=\d)\s*(?:°|\^\s*\{?\s*\\circ\s*\}?)\s*[CF]?\s*$")
# Emphasis or code around the leading number only, then a unit or words ("**73** cm"): the markers
# go, and the tail is then judged like any other ("73 cm" is 73, "73 or 74" no number). What follows
# the closing marker must be a space, a LaTeX command or a letter: "**7**3" is no emphasised 7.
_EMPHASIZED_HEAD = re.compile(r"(\*{1,3}|__|`)([^*_`]+)\1(?=[\s\\A-Za-z])(.+)", flags=re.DOTALL)
# Two-letter words read as units; other two-letter words are more likely variables ("5 ab").
_SHORT_UNITS = {"cm", "mm", "km", "kg", "mg", "ft", "in", "ml", "mi", "hr", "yd", "oz", "lb", "mph", "am", "pm"}
_NOT_UNITS = {"pi", "and", "or", "sin", "cos", "tan", "log", "ln", "exp", "sqrt"}


def _is_unit_tail(words: str) -> bool:
    """Whether the words after a number read as a unit ("dollars", "square feet"), not math."""
    parts = [re.split(r"[/^²³]", w.rstrip(".").lower())[0] for w in words.split()]  # "km/h": km
    return all(w not in _NOT_UNITS and (len(w) > 2 or w in _SHORT_UNITS) for w in parts)


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
    """Answer text with number formatting noise removed: ``\\!``, ``{,}``, ``\\$``, a trailing unit, and
    emphasis around a number that a unit follows (``**73** cm``)."""
    s = _unwrap(s)
    if m := _EMPHASIZED_HEAD.fullmatch(s):
        s = m.group(2).strip() + m.group(3)
    s = s.replace("\\!", "").replace("{,}", ",").replace("\\,", "").replace("\\ ", " ")
    s = s.replace("\\$", "").replace("$", "").replace("\\left", "").replace("\\right", "")
    s = _DEGREE_TAIL.sub("", _UNIT_TAIL.sub("", s).strip()).strip()
    # "10 dollars", "12 ways": a number followed by unit words (not "pi", not one-letter variables).
    if (m := _WORD_TAIL.fullmatch(s)) and _is_unit_tail(m.group(2)):
        s = m.group(1)
    return s


def _sign(sign: str, value: Fraction) -> Fraction:
    return -value if sign == "-" else value


def _parse_number(s: str) -> tuple[Fraction, str] | None:
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
        elif (parsed := _parse_number(part)) is not None and parsed[1] != "comma":
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
        return False  # a set is neither a tuple nor an interval
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


def _number_value(text: str) -> Fraction | None:
    """A plain number's exact value (see _parse_number), or None."""
    parsed = _parse_number(_number_text(text))
    return parsed[0] if parsed else None
