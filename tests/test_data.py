"""Data: the recipe's filters on the shipped sample and the public eval files, and bad rows."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from trainer.config import DatasetConfig, EvalDatasetConfig
from trainer.data import eval_problems, grpo_prompts, load_rows, prompt_length, sft_texts, split_gsm8k
from trainer.errors import DataError
from trainer.format import apply_format, render_solution

SAMPLE = "src/trainer/sample_data"


@pytest.fixture
def tok(tiny_model_dir: Path):
    t = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_format(t)
    return t


def test_sft_keeps_numeric_answers_strips_think(tok) -> None:
    texts = sft_texts(DatasetConfig(path=f"{SAMPLE}/sft.jsonl"), tok, max_seq_length=512)
    assert len(texts) == 240  # the two non-numeric rows (2x, \frac{1}{2}) are dropped
    assert not any("<think>" in t or "</think>" in t for t in texts)
    # one <SOLUTION> in the system prompt, one in the answer
    assert all(t.count("<SOLUTION>") == 2 and t.endswith("</SOLUTION><|endoftext|>") for t in texts)


def test_sft_length_cap_is_half_the_sequence(tok) -> None:
    texts = sft_texts(DatasetConfig(path=f"{SAMPLE}/sft.jsonl"), tok, max_seq_length=512)
    n = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    cap = sorted(n)[len(n) // 2]  # a cap that the longer half exceeds
    kept = sft_texts(DatasetConfig(path=f"{SAMPLE}/sft.jsonl"), tok, max_seq_length=2 * cap)
    assert len(kept) == sum(x <= cap for x in n) < len(texts)
    with pytest.raises(DataError, match=r"no rows left after the filter 'length <= max_seq_length/2'"):
        sft_texts(DatasetConfig(path=f"{SAMPLE}/sft.jsonl"), tok, max_seq_length=4)


def test_grpo_drops_prompts_above_the_quantile(tok, tmp_path: Path) -> None:
    f = tmp_path / "p.jsonl"
    # Ten prompts of strictly increasing length: the 0.9 quantile keeps nine, drops the longest.
    f.write_text(
        "".join(json.dumps({"prompt": "What is 1 + 1?" + " 1 + 1" * i, "solution": "2"}) + "\n" for i in range(10))
    )
    rows, cut = grpo_prompts(DatasetConfig(path=str(f), columns={"answer": "solution"}), tok, quantile=0.9)
    lengths = [prompt_length(tok, r["prompt"]) for r in rows]
    assert len(rows) == 9 and max(lengths) == cut
    longest = grpo_prompts(DatasetConfig(path=str(f), columns={"answer": "solution"}), tok, quantile=1.0)[1]
    assert longest > cut
    assert rows[0]["prompt"][0]["role"] == "system" and rows[0]["answer"] == "2"


def test_grpo_on_shipped_sample_keeps_at_least_the_quantile(tok) -> None:
    cfg = DatasetConfig(path=f"{SAMPLE}/grpo.jsonl", columns={"answer": "solution"})
    rows, cut = grpo_prompts(cfg, tok, quantile=0.9)
    assert 0.9 * 240 <= len(rows) <= 240  # ties at the cut are kept
    assert all(prompt_length(tok, r["prompt"]) <= cut for r in rows)


def test_grpo_on_dapo_sample(tok) -> None:
    rows, cut = grpo_prompts(DatasetConfig(path="data/eval/dapo_sample.jsonl"), tok, quantile=0.9)
    assert 57 <= len(rows) <= 64
    all_lengths = sorted(
        prompt_length(tok, r["prompt"])
        for r in grpo_prompts(DatasetConfig(path="data/eval/dapo_sample.jsonl"), tok, quantile=1.0)[0]
    )
    assert cut == all_lengths[57]  # ceil(0.9 * 64) - 1


def test_gsm8k_answers_after_hashes() -> None:
    rows = eval_problems(
        EvalDatasetConfig(name="gsm8k", path="data/eval/gsm8k_test.jsonl", answer_format="gsm8k"), None
    )
    assert len(rows) == 1319
    assert sum("," in r["answer"] for r in rows) == 14  # thousands separators, per the data README
    assert {"-10", "-3"} <= {r["answer"] for r in rows}


def test_math500_column_mapping_and_limit() -> None:
    cfg = EvalDatasetConfig(name="m", path="data/eval/math500_test.jsonl", columns={"question": "problem"})
    rows = eval_problems(cfg, 5)
    assert len(rows) == 5 and set(rows[0]) == {"question", "answer"}


def test_missing_column_names_it_and_the_available_ones() -> None:
    cfg = EvalDatasetConfig(name="m", path="data/eval/math500_test.jsonl")  # no question column
    with pytest.raises(DataError, match=r"column 'question' \(for question\) not found; it has \['answer', 'level'"):
        eval_problems(cfg, None)


def test_malformed_line_reports_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"prompt": "a", "solution": "1"}) + "\n{broken\n" + json.dumps([1]) + "\n")
    with pytest.raises(DataError, match=rf"{f}:2: malformed row"):
        load_rows(str(f))
    assert load_rows(str(f), on_bad_row="skip") == [{"prompt": "a", "solution": "1"}]


def test_missing_file_is_named() -> None:
    with pytest.raises(DataError, match=r"dataset file 'nope.jsonl' not found"):
        load_rows("nope.jsonl")


def test_parquet_with_column_mapping(tmp_path: Path, tok) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"question": ["What is 1 + 1?"], "final": ["2"]}), f)
    rows, _ = grpo_prompts(DatasetConfig(path=str(f), columns={"prompt": "question", "answer": "final"}), tok, 0.9)
    assert rows == [{"prompt": rows[0]["prompt"], "answer": "2"}]
    assert rows[0]["prompt"][1]["content"] == "What is 1 + 1?"


def test_grpo_drops_prompts_longer_than_max_length(tok, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DatasetConfig(path=f"{SAMPLE}/grpo.jsonl", columns={"answer": "solution"})
    everything, quantile_cut = grpo_prompts(cfg, tok, quantile=1.0)
    lengths = sorted(prompt_length(tok, r["prompt"]) for r in everything)
    limit = lengths[len(lengths) // 2]
    with caplog.at_level(logging.INFO, logger="trainer.data"):
        rows, cut = grpo_prompts(cfg, tok, quantile=0.9, max_length=limit)
    assert cut == limit < quantile_cut
    assert len(rows) == sum(n <= limit for n in lengths)
    assert all(prompt_length(tok, r["prompt"]) <= limit for r in rows)
    assert (
        f"{len(rows)} prompts kept of 240 ({240 - len(rows)} longer than {limit} tokens, max_prompt_length"
        in caplog.text
    )
    with pytest.raises(DataError, match=r"no rows left after the filter 'prompt length <= 16 tokens'"):
        grpo_prompts(cfg, tok, quantile=0.9, max_length=16)


def _rows_file(tmp_path: Path, rows: list[dict]) -> Path:
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


@pytest.mark.parametrize(
    ("bad", "column"),
    [
        ({"prompt": "", "solution": "2"}, "prompt"),
        ({"prompt": "   \n", "solution": "2"}, "prompt"),
        ({"prompt": "What is 1 + 1?", "solution": ""}, "solution"),
        ({"prompt": "What is 1 + 1?", "solution": " "}, "solution"),
        ({"prompt": None, "solution": "2"}, "prompt"),
    ],
)
def test_grpo_row_with_an_empty_value_is_refused_or_skipped(tok, tmp_path: Path, bad: dict, column: str) -> None:
    good = {"prompt": "What is 1 + 1?", "solution": "2"}
    f = _rows_file(tmp_path, [good, bad, good])
    cfg = DatasetConfig(path=str(f), columns={"answer": "solution"})
    with pytest.raises(DataError, match=rf"{f}:2: no value \(null or empty\) in column '{column}'.*on_bad_row: skip"):
        grpo_prompts(cfg, tok, quantile=1.0)
    cfg.on_bad_row = "skip"
    rows, _ = grpo_prompts(cfg, tok, quantile=1.0)
    assert len(rows) == 2


@pytest.mark.parametrize("answer", ["", "  ", None])
def test_eval_row_with_an_empty_answer_is_refused_or_skipped(tmp_path: Path, answer, caplog) -> None:
    f = _rows_file(tmp_path, [{"question": "1+1?", "answer": "2"}, {}, {"question": "2+2?", "answer": answer}])
    f.write_text(f.read_text().replace("{}\n", "\n"))  # a blank line: line numbers are the file's own
    cfg = EvalDatasetConfig(name="e", path=str(f))
    with pytest.raises(DataError, match=rf"{f}:3: no value \(null or empty\) in column 'answer'"):
        eval_problems(cfg, None)
    cfg.on_bad_row = "skip"
    assert eval_problems(cfg, None) == [{"question": "1+1?", "answer": "2"}]
    assert "1 of 2 rows skipped for an empty or unreadable value" in caplog.text


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("2 + 2 = 4\n#### ", "no answer after '####' in column 'answer'"),
        ("2 + 2 = 4\n####\n", "no answer after '####' in column 'answer'"),
        ("The answer is 4.", "no '####' in column 'answer'"),
    ],
)
def test_gsm8k_row_without_a_final_answer_is_refused_or_skipped(
    tok, tmp_path: Path, answer: str, problem: str, caplog
) -> None:
    """answer_format gsm8k reads the answer after '####': none there is an empty answer."""
    f = _rows_file(
        tmp_path, [{"question": "1+1?", "answer": "1 + 1 = 2\n#### 2"}, {"question": "2+2?", "answer": answer}]
    )
    eval_cfg = EvalDatasetConfig(name="e", path=str(f), answer_format="gsm8k")
    grpo_cfg = DatasetConfig(path=str(f), answer_format="gsm8k")
    for read in (lambda: eval_problems(eval_cfg, None), lambda: grpo_prompts(grpo_cfg, tok, quantile=1.0)[0]):
        with pytest.raises(DataError, match=rf"{f}:2: {re.escape(problem)}.*on_bad_row: skip"):
            read()
    eval_cfg.on_bad_row = grpo_cfg.on_bad_row = "skip"
    assert eval_problems(eval_cfg, None) == [{"question": "1+1?", "answer": "2"}]
    assert [r["answer"] for r in grpo_prompts(grpo_cfg, tok, quantile=1.0)[0]] == ["2"]
    assert "1 of 2 rows skipped for an empty or unreadable value" in caplog.text


def test_sft_row_with_an_empty_problem_names_its_row_in_parquet(tmp_path: Path, tok) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"problem": ["1+1?", " "], "generated_solution": ["2", "4"], "expected_answer": ["2", "4"]}), f
    )
    with pytest.raises(DataError, match=rf"{f}: row 2: no value \(null or empty\) in column 'problem'"):
        sft_texts(DatasetConfig(path=str(f)), tok, max_seq_length=512)


@pytest.mark.parametrize(
    ("solution", "working", "final"),
    [
        (  # GSM8K train row 1: annotations go, the arithmetic they annotate stays
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
            "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.",
            "72",
        ),
        ("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10", "Weng earns 12/60 = $0.2 per minute.", "10"),
        ("Total 1,000+1,125 = <<1000+1125=2125>>2,125\n####  2,125 ", "Total 1,000+1,125 = 2,125", "2,125"),
        ("She is down 3 - 13 = <<3-13=-10>>-10.\n#### -10", "She is down 3 - 13 = -10.", "-10"),
        ("a << b is not an annotation >>\n#### 1", "a << b is not an annotation >>", "1"),
        ("#### 5 then #### 6", "#### 5 then", "6"),  # the last '####' ends the working
    ],
)
def test_split_gsm8k(solution: str, working: str, final: str) -> None:
    assert split_gsm8k(solution) == (working, final)


def test_split_gsm8k_without_hashes_names_the_source() -> None:
    with pytest.raises(DataError, match=r"data/x.jsonl: answer without '####' in 'The answer is 4.'"):
        split_gsm8k("The answer is 4.", "data/x.jsonl")


GSM8K_TRAIN = "data/train/gsm8k_train.jsonl"


def test_gsm8k_sft_and_grpo_rows_are_disjoint_slices(tok) -> None:
    sft = sft_texts(DatasetConfig(path=GSM8K_TRAIN, answer_format="gsm8k", rows="0:3"), tok, max_seq_length=4096)
    first = json.loads(Path(GSM8K_TRAIN).read_text().splitlines()[0])
    assert len(sft) == 3 and first["question"] in sft[0]
    assert render_solution(*split_gsm8k(first["answer"])) in sft[0] and "<<" not in sft[0]
    grpo, _ = grpo_prompts(DatasetConfig(path=GSM8K_TRAIN, answer_format="gsm8k", rows="7470:"), tok, quantile=1.0)
    lines = Path(GSM8K_TRAIN).read_text().splitlines()
    assert [r["prompt"][1]["content"] for r in grpo] == [json.loads(x)["question"] for x in lines[7470:]]
    assert [r["answer"] for r in grpo] == [json.loads(x)["answer"].rsplit("####", 1)[1].strip() for x in lines[7470:]]
    with pytest.raises(DataError, match=r"no rows left after the filter 'rows 8000:'"):
        grpo_prompts(DatasetConfig(path=GSM8K_TRAIN, answer_format="gsm8k", rows="8000:"), tok, quantile=1.0)
