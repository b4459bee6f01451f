"""(predicted, reference, expected) cases for `answers_equivalent`, grouped by answer class.

Drawn from MATH-500 answer formats (data/eval/README.md) and the styles of math-verify's,
open-r1's, lm-eval's and the PRM800K grader's test cases. Many cases are deliberately false:
a checker that says True too often trains the wrong thing.
"""

from __future__ import annotations

Case = tuple[str, str, bool]

INTEGERS_AND_DECIMALS: list[Case] = [
    ("42", "42", True),
    ("42", "43", False),
    ("-5", "-5", True),
    ("-5", "5", False),
    ("5", "-5", False),
    ("+5", "5", True),
    ("0", "0.0", True),
    ("0", "-0", True),
    ("0", "0.001", False),
    ("1000", "1000.0", True),
    ("0.5", "0.50", True),
    (".5", "0.5", True),
    ("0.4", ".4", True),
    ("0.25", "0.52", False),
    ("123456789", "123456788", False),
    ("1.0000001", "1", False),
    ("0.0000672", "0.0000671", False),
    (".0000672", "0.0000672", True),
    ("0.3333333", "0.333333", False),
    ("3.14", "3.14159", False),
    ("007", "7", True),
    ("2.5", "5/2", True),
    ("5.00", "5", True),
    ("10", "0.1", False),
]

FRACTIONS: list[Case] = [
    ("0.5", "\\frac{1}{2}", True),
    (".5", "1/2", True),
    ("1/2", "\\frac{1}{2}", True),
    ("\\dfrac12", "0.5", True),
    ("\\dfrac{1}{2}", "\\frac{1}{2}", True),
    ("\\tfrac{1}{2}", "0.5", True),
    ("\\cfrac{1}{3}", "1/3", True),
    ("\\frac43", "4/3", True),
    ("\\frac{14}{3}", "14/3", True),
    ("\\dfrac{17}{50}", "0.34", True),
    ("\\frac{2}{4}", "\\frac{1}{2}", True),
    ("-\\frac{10}{9}", "-10/9", True),
    ("\\frac{-10}{9}", "-10/9", True),
    ("\\frac{1}{2}", "\\frac{1}{3}", False),
    ("\\frac{1}{2}", "2", False),
    ("1/3", "0.333333", True),
    ("1/3", "0.3333", True),
    ("1/3", "0.33", False),
    ("\\frac{1}{12}", "0.0833333333333333", True),
    ("\\frac{1}{15000}", "0.0000672", False),
    ("2/3", "0.67", False),
    ("1/2", "2/1", False),
    ("\\frac{3}{56}", "3/56", True),
    ("0", "\\frac{0}{5}", True),
    ("\\frac{1}{0}", "1", False),
]

MIXED_NUMBERS: list[Case] = [
    ("137 \\frac{1}{2}", "137.5", True),
    ("137 \\frac{1}{2}", "\\frac{275}{2}", True),
    ("137 1/2", "275/2", True),
    ("137 1/2", "137/2", False),
    ("137 1/2", "137.5", True),
    ("4 4/9", "40/9", True),
    ("-4 4/9", "-40/9", True),
    ("4 4/9", "4", False),
    ("4 4/9", "8/9", False),
    ("2\\frac{1}{3}", "7/3", True),
    ("2\\frac{1}{3}", "2/3", False),
]

THOUSANDS: list[Case] = [
    ("1,000", "1000", True),
    ("1000", "1,000", True),
    ("7,425,000", "7425000", True),
    ("1,450,000", "1450000", True),
    ("10,\\!080", "10080", True),
    ("10{,}080", "10080", True),
    ("14{,}916", "14916", True),
    ("58,500", "58500", True),
    ("1,000.99", "1000.99", True),
    ("1 000", "1000", True),
    ("1,5", "15", False),
    ("2.125", "2,125", False),
    ("2,125", "2125", True),
    ("2,125", "2.125", False),
    ("1,000", "1", False),
    ("1,000", "1.000", False),
    ("1,22", "1.22", True),
    ("0,111", "0.111", True),
    ("10,080", "1008", False),
]

SIGNS_AND_WRAPPERS: list[Case] = [
    ("\\boxed{5}", "5", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("$5$", "5", True),
    ("$\\frac{1}{2}$", "\\frac{1}{2}", True),
    ("\\(5\\)", "5", True),
    ("\\[5\\]", "5", True),
    ("5.", "5", True),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{3}", "-3", False),
    ("\\left( \\frac{1}{3} \\right)", "1/3", True),
    ("\\text{5}", "5", True),
    ("--5", "5", True),
]

UNITS_AND_TEXT: list[Case] = [
    ("5 cm", "5", True),
    ("5\\text{ cm}", "5", True),
    ("5.4 \\text{ cents}", "5.4", True),
    ("5.4 \\text{ cents}", "5.5", False),
    ("\\$32,\\!348", "32348", True),
    ("\\$32,\\!348", "32,348", True),
    ("\\$32", "32", True),
    ("\\$5.00", "5", True),
    ("\\$32", "33", False),
    ("90^\\circ", "90", True),
    ("90^{\\circ}", "90^\\circ", True),
    ("90^\\circ", "45", False),
    ("15\\mbox{ cm}^2", "15", True),
    # Models write degrees with the Unicode sign, and units with powers or a per-unit.
    ("90°", "90", True),
    ("90°", "90^\\circ", True),
    ("90°", "45", False),
    ("-5 °C", "-5", True),
    ("5 cm^2", "5", True),
    ("3 ft²", "3", True),
    ("12 square feet", "12", True),
    ("60 km/h", "60", True),
    ("8 cm^3", "9", False),
    ("1/4 cup", "1/4", True),
    ("2 1/2 cups", "2.5", True),
    ("5 ab^2", "5", False),
    ("125 \\textnormal{ miles}", "125", True),
    ("10 dollars", "10", True),
    ("3 square feet", "3", True),
    ("12 ways", "13", False),
    ("\\text{(C)}", "C", True),
    ("C", "\\text{(C)}", True),
    ("(C)", "C", True),
    ("\\textbf{(C)}", "C", True),
    ("B", "\\text{(C)}", False),
    ("\\text{Evelyn}", "Evelyn", True),
    ("\\text{Evelyn}", "\\text{Carla}", False),
    ("204_5", "204_5", True),
    ("204_5", "203_5", False),
]

PERCENT_AND_SCIENTIFIC: list[Case] = [
    ("28\\%", "28", True),
    ("28\\%", "28\\%", True),
    ("50\\%", "0.5", True),
    ("50\\%", "51\\%", False),
    ("10\\%", "0.1", True),
    ("28\\%", "29", False),
    ("1e3", "1000", True),
    ("1e-3", "0.001", True),
    ("1.5E+03", "1500", True),
    ("1.5 \\times 10^3", "1500", True),
    ("6.72 \\times 10^{-5}", ".0000672", True),
    ("6.72 \\times 10^{-5}", "0.000672", False),
    ("2.5e2", "25", False),
    ("10^6", "1,000,000", True),
    ("2^{10}", "1024", True),
    ("2^{10}", "1000", False),
]

RADICALS_AND_PI: list[Case] = [
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("\\sqrt8", "2\\sqrt{2}", True),
    ("\\sqrt{3}", "\\sqrt3", True),
    ("\\sqrt{3}", "3", False),
    ("3\\sqrt{13}", "\\sqrt{117}", True),
    ("3\\sqrt{13}", "\\sqrt{118}", False),
    ("\\frac{\\sqrt{3}}{3}", "\\frac{1}{\\sqrt{3}}", True),
    ("\\sqrt{2}/2", "\\frac{\\sqrt2}{2}", True),
    ("\\sqrt 2+\\sqrt 5", "\\sqrt{2}+\\sqrt{5}", True),
    ("\\sqrt{2}+\\sqrt{5}", "\\sqrt{7}", False),
    ("2\\pi", "6.283185307", True),
    ("2\\pi", "6.28", False),
    ("\\frac94\\pi", "\\frac{9}{4}\\pi", True),
    ("\\frac{9\\pi}{4}", "\\frac{9}{4}\\pi", True),
    ("\\pi", "3.14", False),
    ("4\\pi", "2\\pi", False),
    ("\\pi r^2", "r^2\\pi", True),
]

COLLECTIONS: list[Case] = [
    ("(3,4]", "(3,4]", True),
    ("(3,4]", "(3,4)", False),
    ("[3,4]", "(3,4)", False),
    ("[0,1)", "[0,1)", True),
    ("[0,9)", "[0,1)", False),
    ("(0,9)", "[0,9)", False),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2)\\cup(3,\\infty)", True),
    ("(-\\infty, 2) \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)", False),
    ("[-1, -\\tfrac12) \\cup (-\\tfrac12, 0)", "[-1, -\\frac{1}{2}) \\cup (-\\frac{1}{2}, 0)", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi)", False),
    ("(1,\\frac{9}{2})", "(1,4.5)", True),
    ("(6,31,-1)", "(6,31,-1)", True),
    ("(6,31,-1)", "(6,-1,31)", False),
    ("(1, 2)", "(2, 1)", False),
    ("3, 5, 7", "3, 5, 7", True),
    ("3, 5, 7", "7, 5, 3", True),
    ("3, 5, 7", "3, 5", False),
    ("3, 5, 7", "3, 5, 8", False),
    ("-2, 1", "1, -2", True),
    ("\\{3,5,7\\}", "3,5,7", True),
    ("\\{1,2\\}", "\\{2,1\\}", True),
    # A set in braces is neither a tuple nor an interval, in whichever order its elements come.
    ("\\{1,2\\}", "(1,2)", False),
    ("\\{2,1\\}", "(1,2)", False),
    ("(2,1)", "\\{1,2\\}", False),
    ("\\{1,2,3\\}", "(1,2,3)", False),
    ("\\{x,y\\}", "(x,y)", False),
    ("\\{1,2\\}", "[1,2]", False),
    ("\\{1,2\\}", "\\{1,3\\}", False),
    ("\\{1\\pm\\sqrt{5},-2\\}", "\\{-2, 1+\\sqrt{5}, 1-\\sqrt{5}\\}", True),
    ("\\pm 3", "\\pm 3", True),
    ("\\pm 3", "3", False),
    ("\\pm 3", "-3, 3", True),
    ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{19}", True),
    ("1 \\pm \\sqrt{19}", "1 \\pm \\sqrt{18}", False),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    ("\\begin{pmatrix}1 & 2 \\\\ 3 & 4\\end{pmatrix}", "\\begin{pmatrix}1 & 2 \\\\ 3 & 5\\end{pmatrix}", False),
    ("\\begin{pmatrix}0.5 \\\\ 2\\end{pmatrix}", "\\begin{pmatrix}\\frac{1}{2} \\\\ 2\\end{pmatrix}", True),
    ("\\begin{bmatrix}0 & 0 \\\\ 0 & 0\\end{bmatrix}", "\\begin{pmatrix}0 & 0 \\\\ 0 & 0\\end{pmatrix}", True),
    ("\\infty", "\\infty", True),
    ("-\\infty", "\\infty", False),
]

EQUATIONS_AND_EXPRESSIONS: list[Case] = [
    ("x = 3", "3", True),
    ("3", "x = 3", True),
    ("k=1", "1", True),
    ("x = 3", "4", False),
    ("x=3", "y=3", False),
    ("y = 2x + 3", "y=3+2x", True),
    ("y = 2x + 3", "y = 3x + 2", False),
    ("y=-\\frac{1}{2}x+\\frac{3}{4}", "2x+4y-3=0", True),
    ("2x+3", "3+2x", True),
    ("2x+3", "2y+3", False),
    ("\\frac{x}{7}+\\frac{2}{7}", "\\frac{x+2}{7}", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("x^2+2x+1", "(x-1)^2", False),
    ("2 \\sin b \\cos a", "2 \\sin b \\cos a", True),
    ("\\sec^2(y)", "\\tan^2(y)+1", True),
    ("x \\geq 5", "x >= 5", True),
    ("5 \\geq x", "x \\leq 5", True),
    ("x < 5", "x > 5", False),
    ("-x > -1", "x < 1", True),
    ("2-2p", "2-2p", True),
    ("2-2p", "2+2p", False),
    ("\\frac{\\pi r}{h+r}", "\\frac{r\\pi}{r+h}", True),
    ("(x^2+1)^2", "x^4+2x^2+1", True),
    ("(x^2+1)^2", "x^4+x^2+1", False),
    ("x^2y^2", "y^2x^2", True),
    ("x^2y^3", "x^3y^2", False),
]

EXTRACTION_FROM_TEXT: list[Case] = [
    ("The answer is $\\boxed{42}$.", "42", True),
    ("so the area is \\boxed{189} square centimeters", "189", True),
    ("Thus $x-p=\\boxed{2-2p}$.", "2-2p", True),
    ("The final answer is $\\frac{14}{3}$.", "\\frac{14}{3}", True),
    ("The answer is $\\boxed{41}$.", "42", False),
    ("", "42", False),
    ("   ", "0", False),
    ("42", "", False),
]

TINY_VALUES: list[Case] = [
    ("\\frac{1}{2^{98}}", "\\frac{1}{2^{99}}", False),
    ("2^{-30}", "2^{-31}", False),
    ("10^{-20}", "2\\cdot 10^{-20}", False),
    ("\\frac{1}{2^{99}}", "2^{-99}", True),
    ("\\frac{\\sqrt{2}}{10^{9}}", "\\frac{\\sqrt{3}}{10^{9}}", False),
    ("1e-30", "2e-30", False),
    ("e^{-50}", "e^{-51}", False),
    ("\\frac{1}{10^{7}}", "0", False),
    ("1+10^{-9}", "1", False),
]

# The parser stops at what it does not know; that prefix is not the answer.
READ_PARTLY: list[Case] = [
    ("1", "1 - \\frac{1}{\\mathrm{e}}", False),
    ("1 - 1/e", "1 - \\frac{1}{\\mathrm{e}}", True),
    ("1-e^{-1}", "1 - \\frac{1}{\\mathrm{e}}", True),
    ("2", "2 + \\mathrm{i}", False),
    ("1", "1 - \\frac{1}{\\mathrm{x}}", False),
    ("1 - \\frac{1}{\\mathrm{x}}", "1", False),
    ("1", "1 + \\operatorname{sgn}(x)", False),
    ("1", "1 - \\frac{1}{\\operatorname{e}}", False),
    ("5", "5 + \\foo{x}", False),
    ("1 - \\frac{1}{\\mathrm{x}}", "1 - \\frac{1}{\\mathrm{y}}", False),  # the same readable start
    ("\\operatorname{sgn}(x)", "\\operatorname{sgn}( x )", True),  # unreadable, but the same text
    ("2", "2\\pi", False),
    ("2", "2 + \\sqrt{3}", False),
    ("3", "3\\text{ cm}^2", True),  # a unit is dropped on purpose
]

MARKDOWN: list[Case] = [
    ("**73**", "73", True),
    ("*73*", "73", True),
    ("__73__", "73", True),
    ("**\\frac{1}{2}**", "0.5", True),
    ("**74**", "73", False),
    ("`73`", "73", True),
    ("\\boxed{**73**}", "73", True),
    ("**\\boxed{73}**", "73", True),
    ("***73***", "73", True),
    # Emphasis around the number, then a unit or words: the unit is dropped as in "73 cm".
    ("**73** cm", "73", True),
    ("**73** cm.", "73", True),
    ("**73** centimeters", "73 cm", True),
    ("**73**\\text{ cm}", "73", True),
    ("*73* square feet", "73", True),
    ("__1,000__ dollars", "1000", True),
    ("`73` cm", "73", True),
    ("**74** cm", "73", False),
    ("**73** or 74", "73", False),
    ("**73** and **74**", "73", False),
    ("**7**3", "73", False),
    ("**7**3", "7", False),
    ("**2** pi", "2", False),
]

# A bare list joined by commas, "and" or "or" is the set of its elements (see answers_equivalent).
WORD_LISTS: list[Case] = [
    ("1, 2 and 3", "1, 2, 3", True),
    ("1, 2, 3", "1, 2, and 3", True),
    ("1, 2 and 3", "3, 2, 1", True),
    ("\\{1,2,3\\}", "1, 2 and 3", True),
    ("$1$ and $2$", "1,2", True),
    ("$1$, $2$, and $3$", "3, 2, 1", True),
    ("1 \\text{ and } 2", "1, 2", True),
    ("1, 2 and 3", "1, 2", False),
    ("1, 2 and 4", "1, 2, 3", False),
    ("$1$ and $2$", "1", False),
    ("1", "1 and 2", False),
    ("1 and 2", "2 and 1", True),
    ("1 or 2", "1, 2", True),
    ("-1 and 2", "2, -1", True),
    ("\\frac{1}{2} and 3", "3, 0.5", True),
]

ALL_CASES: list[Case] = (
    INTEGERS_AND_DECIMALS
    + FRACTIONS
    + MIXED_NUMBERS
    + THOUSANDS
    + SIGNS_AND_WRAPPERS
    + UNITS_AND_TEXT
    + PERCENT_AND_SCIENTIFIC
    + RADICALS_AND_PI
    + COLLECTIONS
    + EQUATIONS_AND_EXPRESSIONS
    + EXTRACTION_FROM_TEXT
    + TINY_VALUES
    + READ_PARTLY
    + MARKDOWN
    + WORD_LISTS
)

# Hostile inputs: each must return (True or False) quickly and never raise.
HOSTILE: list[tuple[str, str]] = [
    ("9^9^9^9", "1"),
    ("9^{9^{9^{9}}}", "1"),
    ("{9^9}^{9^9}", "1"),
    ("(9^9)^(9^9)", "1"),
    ("2^{100000000}", "1"),
    ("10**10**10", "1"),
    ("100000!", "1"),
    ("\\frac{" * 500 + "1" + "}{2}" * 500, "1"),
    ("(" * 5000 + "1" + ")" * 5000, "1"),
    ("{" * 5000 + "1" + "}" * 5000, "1"),
    ("1" * 100_000, "1"),
    ("1" * 5_000, "1" * 5_000),
    ("x+" * 50_000 + "1", "1"),
    ("\\sqrt{" * 300 + "2" + "}" * 300, "2"),
    ("1e99999999", "1"),
    ("9" * 4400, "1"),
    ("\\boxed{" + "a" * 100_000 + "}", "a"),
    ("$" * 100_000, "1"),
    ("\\left(" * 2000 + "1" + "\\right)" * 2000, "1"),
    ("1,000" * 20_000, "1000"),
]
