"""scripts/learning_run.py's data: four disjoint sets whose answers are right (the run's claims rest on it)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("learning_run", ROOT / "scripts/learning_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sets_share_no_question_and_answers_are_right(tmp_path: Path) -> None:
    run = _script()
    paths = run.make_data(tmp_path, {"heldout": 50, "grpo": 80, "sft": 60, "pretrain": 100}, max_number=9, seed=1)
    rows = {name: [json.loads(line) for line in p.read_text().splitlines()] for name, p in paths.items()}
    questions = {
        "heldout": {r["question"] for r in rows["heldout"]},
        "grpo": {r["prompt"] for r in rows["grpo"]},
        "sft": {r["problem"] for r in rows["sft"]},
        "pretrain": {r["text"].split("\n")[0] for r in rows["pretrain"]},
    }
    assert {k: len(v) for k, v in questions.items()} == {"heldout": 50, "grpo": 80, "sft": 60, "pretrain": 100}
    names = list(questions)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not questions[a] & questions[b], (a, b)
    for r in rows["sft"] + [
        {"generated_solution": x["text"].split("\n")[1], "expected_answer": x["answer"]} for x in rows["pretrain"]
    ]:
        a, op, b, _, c = r["generated_solution"].rstrip(".").split()
        assert str(run.OPS[op](int(a), int(b))) == c == r["expected_answer"]


def test_too_many_rows_for_the_numbers_is_a_clear_error(tmp_path: Path) -> None:
    run = _script()
    try:
        # With both numbers 0 there are at most 6 x 12 x 10 = 720 distinct questions.
        run.make_data(tmp_path, {"heldout": 1000, "grpo": 1, "sft": 1, "pretrain": 1}, max_number=0, seed=1)
    except SystemExit as e:
        assert "cannot draw 1000 distinct heldout problems" in str(e)
    else:
        raise AssertionError("expected SystemExit")
