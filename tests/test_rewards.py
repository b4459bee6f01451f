"""Rewards and answer verification: equivalence table, seed parity, fixed defects, isolation, bounds."""

from __future__ import annotations

import doctest
import logging
import pickle
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from equivalence_cases import ALL_CASES, HOSTILE
from trainer import answers, rewards
from trainer.answers import answers_equivalent, extract_solution, follows_format
from trainer.errors import ConfigError
from trainer.format import REASONING_START, render_solution
from trainer.rewards import REWARD_SETS, RewardFunction, build_reward_funcs

EOS = "<|im_end|>"  # has regex metacharacters, so escaping is exercised
BOUND_S = 5.0  # generous wall-clock bound per call: a hang guard, not a latency target


def done(answer: str, tail: str = "") -> str:
    """A completion in the format (the prompt already holds <start_working_out>)."""
    return f"Working out here.<end_working_out><SOLUTION>{answer}</SOLUTION>{tail}"


def score(reward_set: str, name: str, texts: list[str], answer: str | None = None, conversational: bool = True):
    (func,) = build_reward_funcs(reward_set, [name], eos_token=EOS, error_score=-9.0)
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else list(texts)
    prompts = [[{"role": "user", "content": "q"}]] * len(texts)
    kwargs = {} if answer is None else {"answer": [answer] * len(texts)}
    return func(prompts=prompts, completions=completions, **kwargs)


# --------------------------------------------------------------------------------------------
# answers_equivalent
# --------------------------------------------------------------------------------------------


def test_case_table_is_large_and_balanced():
    assert len(ALL_CASES) >= 150
    assert sum(1 for *_, expected in ALL_CASES if not expected) >= 50


@pytest.mark.parametrize(
    ("predicted", "reference", "expected"), ALL_CASES, ids=[f"{p!r}|{r!r}" for p, r, _ in ALL_CASES]
)
def test_answers_equivalent_table(predicted, reference, expected):
    assert answers_equivalent(predicted, reference) is expected


@pytest.mark.parametrize(("predicted", "reference"), HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_input_is_bounded(predicted, reference):
    start = time.monotonic()
    result = answers_equivalent(predicted, reference)
    assert isinstance(result, bool)
    assert time.monotonic() - start < BOUND_S


def test_hostile_input_is_bounded_off_the_main_thread():
    # No SIGALRM deadline off the main thread: the input guards alone must bound the time.
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda pr: answers_equivalent(*pr), HOSTILE))
    assert all(isinstance(r, bool) for r in results)
    assert time.monotonic() - start < BOUND_S * 2


def test_same_answers_off_the_main_thread():
    sample = ALL_CASES[::5]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda c: answers_equivalent(c[0], c[1]), sample))
    assert results == [expected for *_, expected in sample]


def test_deadline_stops_a_slow_comparison(monkeypatch):
    def slow(pred: str, ref: str) -> bool:
        time.sleep(10)
        return True

    monkeypatch.setattr(answers, "_symbolic_equal", slow)
    monkeypatch.setattr(answers, "_warmed_up", True)
    monkeypatch.setattr(answers, "_TIMEOUT_S", 0.2)
    start = time.monotonic()
    assert answers_equivalent("x+1", "y+2") is False
    assert time.monotonic() - start < 2.0


def test_non_string_and_empty_inputs():
    assert answers_equivalent(5, "5") is True  # type: ignore[arg-type]
    assert answers_equivalent(None, "5") is False  # type: ignore[arg-type]
    assert answers_equivalent("", "") is False


# --------------------------------------------------------------------------------------------
# Format helpers shared with evaluation
# --------------------------------------------------------------------------------------------


def test_follows_format_and_extract_solution():
    assert follows_format(done("4"))
    assert follows_format(done("4", EOS), eos_token=EOS)
    assert follows_format(done("4", f"  \n{EOS}\n"), eos_token=EOS)
    assert not follows_format(done("4", EOS))  # without the EOS token the EOS text is trailing junk
    assert not follows_format(done("4", "\nP.S. more"))
    assert not follows_format("<SOLUTION>4</SOLUTION>")
    assert not follows_format("<end_working_out><SOLUTION>4")
    assert extract_solution(done(" 42 ")) == " 42 "
    assert extract_solution(done("1", " then <SOLUTION>2</SOLUTION>")) == "1"
    assert extract_solution("<end_working_out><SOLUTION>4") is None
    assert extract_solution("no tags") is None
    # The SFT renderer's output follows the format once the prompt's opening tag is removed.
    rendered = render_solution("2+2=4", "4")
    assert rendered.startswith(REASONING_START)
    assert follows_format(rendered) and extract_solution(rendered) == "4"


# --------------------------------------------------------------------------------------------
# Seed set: parity with the reference notebook (expected values computed by hand from its rules)
# --------------------------------------------------------------------------------------------


def test_seed_match_format_exactly():
    texts = [
        done("4"),  # formatted
        done("4", EOS),  # with EOS
        done("4", f" \n{EOS}\n"),  # whitespace around EOS
        done("4", "\nmore text"),  # MULTILINE defect: $ matches at the line end
        done("4", " more text"),  # trailing text on the same line
        "Working<end_working_out><SOLUTION>4",  # truncated
        "<SOLUTION>4</SOLUTION>",  # no <end_working_out>
        done("1", " or <SOLUTION>2</SOLUTION>"),  # multi-tag: (.+?) spans the first </SOLUTION>
        done("4", EOS + EOS),  # EOS twice
        done(""),  # empty answer
        "plain text, no format",
    ]
    assert score("seed", "match_format_exactly", texts) == [3.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0]


def test_seed_match_format_approximately():
    texts = [
        done("4"),
        "Working<end_working_out><SOLUTION>4",  # truncated: </SOLUTION> missing
        "nothing",
        done("1", "<SOLUTION>2</SOLUTION>"),  # two solution blocks
        REASONING_START * 3 + done("4"),  # <start_working_out> is not counted
        done("4") + "<end_working_out>",
    ]
    assert score("seed", "match_format_approximately", texts) == [1.5, 0.0, -3.0, -1.5, 1.5, 0.0]


def test_seed_check_answer():
    guesses = ["10", " 10 ", "9.5", "8.5", "11", "12", "13", "-10", "1,000", "\\frac{20}{2}", "ten", "10.0"]
    texts = [done(g) for g in guesses] + ["10", "<SOLUTION>10</SOLUTION>", done("10", "\nextra line")]
    expected = [5.0, 3.5, 2.0, 1.5, 2.0, 1.5, -2.5, -2.5, -4.5, -4.5, -4.5, 2.0, -2.0, -2.0, 5.0]
    assert score("seed", "check_answer", texts, answer="10") == expected


def test_seed_check_answer_defects_are_reproduced():
    assert score("seed", "check_answer", [done("0"), done("0.0")], answer="0") == [5.0, -4.5]  # 0/0
    assert score("seed", "check_answer", [done("1000")], answer="1,000") == [-4.5]  # float("1,000")
    assert score("seed", "check_answer", [done("0.5")], answer="\\frac{1}{2}") == [-4.5]  # LaTeX
    assert score("seed", "check_answer", [done("-9.5"), done("9.5")], answer="-10") == [2.0, -2.5]
    # Multi-tag: the captured guess is "1</SOLUTION> or <SOLUTION>2".
    assert score("seed", "check_answer", [done("1", " or <SOLUTION>2</SOLUTION>")], answer="2") == [-4.5]


def test_seed_check_numbers():
    texts = [
        "<SOLUTION>10</SOLUTION>",
        "<SOLUTION>The answer is 10</SOLUTION>",
        "<SOLUTION>1,0</SOLUTION>",  # defect: commas removed, read as 10
        "<SOLUTION>Answer: x. 10</SOLUTION>",  # defect: "." is the first number-like match
        "no solution tag 10",
        "<SOLUTION>none</SOLUTION>",
        "<SOLUTION>10",  # truncated
        "<SOLUTION>-10</SOLUTION>",
        "<SOLUTION>10.0</SOLUTION>",
        "<SOLUTION>9</SOLUTION>",
    ]
    assert score("seed", "check_numbers", texts, answer="10") == [3.5, 3.5, 3.5, 0.0, -2.5, -2.5, 3.5, -1.5, 3.5, -1.5]
    assert score("seed", "check_numbers", ["<SOLUTION>1000"], answer="1,000") == [0.0]  # float("1,000")
    assert score("seed", "check_numbers", ["<SOLUTION>0.5"], answer="\\frac{1}{2}") == [0.0]
    assert score("seed", "check_numbers", ["<SOLUTION>2,125", "<SOLUTION>2.125"], answer="2125") == [3.5, -1.5]


def test_plain_string_completions_score_like_conversational():
    texts = [done("10"), done("9"), "junk", done("10", "\nmore")]
    for reward_set in REWARD_SETS:
        for name in REWARD_SETS[reward_set]:
            assert score(reward_set, name, texts, answer="10", conversational=False) == score(
                reward_set, name, texts, answer="10"
            ), (reward_set, name)


# --------------------------------------------------------------------------------------------
# Default set: each seed defect fixed
# --------------------------------------------------------------------------------------------


def test_default_format_rejects_trailing_lines_and_multiple_blocks():
    texts = [done("4"), done("4", EOS), done("4", "\nmore text"), done("1", " or <SOLUTION>2</SOLUTION>")]
    assert score("default", "match_format_exactly", texts) == [3.0, 3.0, 0.0, 0.0]
    assert score("default", "check_answer", texts, answer="4") == [5.0, 5.0, -2.0, -2.0]


# Whitespace, LaTeX spacing, and answers that are only wrappers or punctuation (Unicode's too):
# nothing is there once unwrapped.
@pytest.mark.parametrize(
    "blank",
    [" ", "", "\n\t ", "  \n", "$ $", "$$", "\\boxed{ }", "**", ".", "?", "\\(\\)"]
    + ["—", "…", "–", "\\quad", "$\\qquad$", "\\hspace{1em}", "\\boxed{\\;}", "\u00a0"],
)
def test_default_format_pays_nothing_for_an_empty_answer(blank):
    text = f"<end_working_out><SOLUTION>{blank}</SOLUTION>"
    assert score("default", "match_format_exactly", [text, text + EOS]) == [0.0, 0.0]
    assert not follows_format(text)
    assert score("default", "check_answer", [text], answer="4") == [-2.0]
    if blank:  # the seed set keeps the recipe's regex, which pays for it
        assert score("seed", "match_format_exactly", [text]) == [3.0]


@pytest.mark.parametrize("answer", ["∅", "\\emptyset", "0", "x", "\\text{none}"])
def test_default_format_pays_for_a_short_answer(answer):
    text = f"<end_working_out><SOLUTION>{answer}</SOLUTION>"
    assert score("default", "match_format_exactly", [text]) == [3.0] and follows_format(text)


def test_markdown_emphasis_in_the_solution_counts_as_the_answer():
    texts = [done("**73**"), done("*73*"), done("`73`"), done("\\boxed{**73**}")]
    assert score("default", "check_answer", texts, answer="73") == [5.0, 5.0, 5.0, 5.0]
    assert score("default", "check_numbers", [done("**73**")], answer="73") == [3.5]
    assert score("default", "check_answer", [done("**73** cm"), done("**73** or 74")], answer="73") == [5.0, -4.5]
    assert score("default", "check_numbers", [done("**73** cm")], answer="73") == [3.5]
    assert score("default", "check_answer", [done("**74**")], answer="73") == [2.0]


def test_default_check_answer_fixes_commas():
    assert score("default", "check_answer", [done("1000"), done("1,000")], answer="1,000") == [5.0, 5.0]
    assert score("default", "check_answer", [done("1,000")], answer="1000") == [5.0]
    assert score("default", "check_answer", [done("2.125")], answer="2,125") == [-2.5]  # not close to 2125


def test_default_check_answer_fixes_latex():
    assert score("default", "check_answer", [done("0.5"), done("\\dfrac12")], answer="\\frac{1}{2}") == [5.0, 5.0]
    assert score("default", "check_answer", [done("0.45")], answer="\\frac{1}{2}") == [2.0]
    assert score("default", "check_answer", [done("(3,4)")], answer="(3,4]") == [-2.5]
    assert score("default", "check_answer", [done("x^2")], answer="12") == [-4.5]


def test_default_check_answer_fixes_negative_ratios_and_zero():
    guesses = ["-9.5", "-8.5", "9.5", "10", "-11"]
    assert score("default", "check_answer", [done(g) for g in guesses], answer="-10") == [2.0, 1.5, -2.5, -2.5, 2.0]
    assert score("default", "check_answer", [done("0.0"), done("0.05"), done("0")], answer="0") == [5.0, -2.5, 5.0]


def test_default_check_answer_scale_matches_seed():
    guesses = ["10", " 10 ", "9.5", "8.5", "13", "ten"]
    expected_seed = [5.0, 3.5, 2.0, 1.5, -2.5, -4.5]
    assert score("default", "check_answer", [done(g) for g in guesses], answer="10") == expected_seed
    assert score("default", "check_answer", ["no format 10"], answer="10") == [-2.0]


def test_default_check_numbers_fixes_defects():
    texts = [
        "<SOLUTION>1,0</SOLUTION>",  # no longer read as 10
        "<SOLUTION>Answer: x. 10</SOLUTION>",  # the stray "." no longer hides the number
        "<SOLUTION>The answer is 10</SOLUTION>",
        "<SOLUTION>10",  # truncated still counts
        "<SOLUTION>\\frac{20}{2}</SOLUTION>",
        "<SOLUTION>none</SOLUTION>",
        "no solution tag 10",
    ]
    assert score("default", "check_numbers", texts, answer="10") == [-1.5, 3.5, 3.5, 3.5, 3.5, -2.5, -2.5]
    assert score("default", "check_numbers", ["<SOLUTION>1000", "<SOLUTION>2.125"], answer="1,000") == [3.5, -1.5]
    assert score("default", "check_numbers", ["<SOLUTION>0.5"], answer="\\frac{1}{2}") == [3.5]


# --------------------------------------------------------------------------------------------
# Wiring: names, errors, isolation, pickling, metrics, doctests
# --------------------------------------------------------------------------------------------


def test_sets_share_names():
    assert (
        set(REWARD_SETS["seed"])
        == set(REWARD_SETS["default"])
        == {
            "match_format_exactly",
            "match_format_approximately",
            "check_answer",
            "check_numbers",
        }
    )


def test_callable_names_are_reward_names_for_trl():
    from trl.trainer.utils import get_callable_name

    funcs = build_reward_funcs("default", list(REWARD_SETS["default"]), eos_token=EOS, error_score=0.0)
    assert [get_callable_name(f) for f in funcs] == list(REWARD_SETS["default"])
    assert all(f.__name__ == get_callable_name(f) for f in funcs)


def test_unknown_names_raise_config_error_listing_valid_names():
    with pytest.raises(ConfigError, match="check_answer"):
        build_reward_funcs("default", ["check_anwser"], eos_token=EOS, error_score=0.0)
    with pytest.raises(ConfigError, match="seed"):
        build_reward_funcs("nope", ["check_answer"], eos_token=EOS, error_score=0.0)
    assert rewards.reward_names("seed") == list(REWARD_SETS["seed"])


def test_reward_functions_pickle():
    funcs = build_reward_funcs("default", list(REWARD_SETS["default"]), eos_token=EOS, error_score=-1.0)
    restored = pickle.loads(pickle.dumps(funcs))
    texts = [[{"role": "assistant", "content": done("4", EOS)}]]
    for f, g in zip(funcs, restored, strict=True):
        assert g.__name__ == f.__name__
        assert g(None, texts, answer=["4"]) == f(None, texts, answer=["4"])


def test_a_raising_completion_gets_error_score_and_others_keep_theirs(caplog):
    def picky(text: str, answer, fmt) -> float:
        if "boom" in text:
            raise RuntimeError("scorer failed")
        return 1.0

    func = RewardFunction("picky", picky, eos_token=EOS, error_score=-7.0)
    with caplog.at_level(logging.WARNING, logger="trainer.rewards"):
        scores = func(None, ["fine", "boom", "fine too"], answer=["1", "2", "3"])
    assert scores == [1.0, -7.0, 1.0]
    assert "picky" in caplog.text and "boom" in caplog.text


def test_a_malformed_completion_is_isolated_in_a_real_reward(caplog):
    (func,) = build_reward_funcs("default", ["check_answer"], eos_token=EOS, error_score=-3.0)
    completions = [[{"role": "assistant", "content": done("4")}], 12345, [{"role": "assistant", "content": done("5")}]]
    with caplog.at_level(logging.WARNING, logger="trainer.rewards"):
        assert func(None, completions, answer=["4", "4", "4"]) == [5.0, -3.0, -2.5]
    assert "12345" in caplog.text


def test_error_score_none_is_passed_through():
    func = RewardFunction("x", lambda t, a, f: 1 / 0, eos_token=None, error_score=None)
    assert func(None, ["a"], answer=["1"]) == [None]


def test_missing_answer_column_fails_loudly():
    (func,) = build_reward_funcs("default", ["check_answer"], eos_token=EOS, error_score=0.0)
    with pytest.raises(ValueError, match="answer"):
        func(None, [done("4")])
    (fmt,) = build_reward_funcs("default", ["match_format_exactly"], eos_token=EOS, error_score=0.0)
    assert fmt(None, [done("4")]) == [3.0]  # format rewards need no answer


def test_accuracy_is_logged_apart_from_the_shaped_reward():
    logged: list[tuple[str, float]] = []
    (func,) = build_reward_funcs("default", ["check_answer"], eos_token=EOS, error_score=0.0)
    func(
        None,
        [done("4"), done("4.1"), "junk", done("\\frac{8}{2}")],
        answer=["4"] * 4,
        log_metric=lambda n, v: logged.append((n, v)),
    )
    assert logged == [("accuracy", 0.5)]


def test_trl_extra_kwargs_are_accepted():
    (func,) = build_reward_funcs("seed", ["check_answer"], eos_token=EOS, error_score=0.0)
    out = func(
        prompts=[[{"role": "user", "content": "q"}]],
        completions=[[{"role": "assistant", "content": done("4")}]],
        completion_ids=[[1, 2, 3]],
        answer=["4"],
        trainer_state=object(),
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    assert out == [5.0]


def test_docstring_examples_run():
    results = [doctest.testmod(module, optionflags=doctest.ELLIPSIS) for module in (answers, rewards)]
    assert sum(r.attempted for r in results) >= 10
    assert sum(r.failed for r in results) == 0


def test_every_reward_has_a_docstring_example():
    for reward_set in REWARD_SETS.values():
        for scorer in reward_set.values():
            assert scorer.__doc__ and ">>>" in scorer.__doc__, scorer


def test_math_verify_timeout_warning_is_dropped_and_others_pass():
    """math-verify warns "Timeout is disabled" because answers_equivalent turns its timeouts off on
    purpose (ours wrap it); that one message is filtered, not the logger."""
    import subprocess
    import sys

    code = (
        "import logging; logging.basicConfig(level=logging.INFO)\n"
        "from trainer.rewards import answers_equivalent\n"
        "assert answers_equivalent('x + 1', '1 + x')\n"
        "logging.getLogger('math_verify.parser').warning('another math-verify warning')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "Timeout is disabled" not in res.stderr and "another math-verify warning" in res.stderr
