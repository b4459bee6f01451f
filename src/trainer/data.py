"""Datasets for each stage: hub or local files, a column mapping, and the recipe's filters.

Every stage names the columns it needs (SFT: problem, solution, answer; GRPO: prompt, answer;
eval: question, answer); `columns` in the config maps those names onto the dataset's own.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from trainer.config import DatasetConfig, EvalDatasetConfig, row_slice
from trainer.errors import DataError
from trainer.format import prompt_messages, render_solution

log = logging.getLogger(__name__)

SFT_COLUMNS = {"problem": "problem", "solution": "generated_solution", "answer": "expected_answer"}
GRPO_COLUMNS = {"prompt": "prompt", "answer": "answer"}
EVAL_COLUMNS = {"question": "question", "answer": "answer"}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _read_jsonl(path: Path, on_bad_row: str) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
            except ValueError as e:
                msg = f"{path}:{lineno}: malformed row ({e})"
                if on_bad_row == "error":
                    raise DataError(f"{msg}; fix the line or set on_bad_row: skip for this dataset.") from None
                log.warning("%s; skipped", msg)
                continue
            rows.append(_Row(row, where=f"{path}:{lineno}"))
    return rows


class _Row(dict):
    """A row read from a local file, with the `file:line` it came from (for errors)."""

    def __init__(self, row: dict[str, Any], where: str) -> None:
        super().__init__(row)
        self.where = where


def load_rows(path: str, *, name: str | None = None, split: str = "train", on_bad_row: str = "error") -> list[dict]:
    """Rows of a local .jsonl/.json/.parquet file, or of a hub dataset split."""
    local = Path(path)
    if path.endswith(_LOCAL_SUFFIXES) or local.exists():
        if not local.is_file():
            raise DataError(f"dataset file '{path}' not found (relative paths start at {Path.cwd()}).")
        if local.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                return pq.read_table(local).to_pylist()
            except Exception as e:  # pyarrow raises several types for a damaged file
                raise DataError(f"dataset file '{path}' is not a readable parquet file: {e}") from None
        return _read_jsonl(local, on_bad_row)
    import datasets

    try:
        ds = datasets.load_dataset(path, name, split=split)
    except Exception as e:  # network, missing split/config, auth: all end as one message
        raise DataError(
            f"could not load hub dataset '{path}' (config {name!r}, split {split!r}): {type(e).__name__}: {e}"
        ) from None
    return ds.to_list()


def select_columns(
    rows: list[dict],
    wanted: dict[str, str],
    mapping: dict[str, str],
    source: str,
    on_bad_row: str = "error",
    answer_format: str = "plain",
) -> list[dict]:
    """Rename the dataset's columns to the stage's names; error naming any that are missing.

    A row whose value is null, empty or only whitespace in one of them, or (answer_format gsm8k)
    whose answer has no '####' or nothing after it, is an error naming its `file:line` (a row
    number for other sources) and the column, or with `on_bad_row: skip` is skipped and counted in
    the log."""
    unknown = set(mapping) - set(wanted)
    if unknown:
        raise DataError(f"{source}: columns mapping names {sorted(unknown)}, but this stage uses {sorted(wanted)}.")
    cols = {k: mapping.get(k, v) for k, v in wanted.items()}
    if not rows:
        raise DataError(f"{source}: the dataset is empty.")
    available = set(rows[0])
    for ours, theirs in cols.items():
        if theirs not in available:
            raise DataError(
                f"{source}: column '{theirs}' (for {ours}) not found; it has {sorted(available)}. "
                f"Map it with columns: {{{ours}: <column>}}."
            )
    out = []
    for i, row in enumerate(rows):
        if problem := _bad_value(row, cols, answer_format):
            where = getattr(row, "where", None) or f"{source}: row {i + 1}"
            msg = f"{where}: {problem}"
            if on_bad_row == "error":
                raise DataError(f"{msg}; fix the row or set on_bad_row: skip for this dataset.")
            log.warning("%s; skipped", msg)
            continue
        out.append({ours: v if isinstance(v := row[theirs], str) else str(v) for ours, theirs in cols.items()})
    if len(out) < len(rows):
        log.warning(
            "%s: %d of %d rows skipped for an empty or unreadable value (on_bad_row: skip)",
            source,
            len(rows) - len(out),
            len(rows),
        )
    return _nonempty(out, "a value in every column", source)


def _bad_value(row: dict, cols: dict[str, str], answer_format: str) -> str | None:
    """What is wrong with a row's values (`cols`: stage name -> the dataset's column), or None."""
    empty = [t for t in cols.values() if row.get(t) is None or not str(row.get(t)).strip()]
    if empty:
        return f"no value (null or empty) in column '{empty[0]}'"
    if answer_format == "gsm8k":
        column = cols["answer"]
        try:
            final = split_gsm8k(str(row[column]))[1]
        except DataError:
            return f"no '####' in column '{column}' (answer_format gsm8k: a solution ending in '#### <answer>')"
        if not final:
            return f"no answer after '####' in column '{column}'"
    return None


def _nonempty(rows: list, what: str, source: str) -> list:
    if not rows:
        raise DataError(f"{source}: no rows left after the filter '{what}'; check the data or relax the filter.")
    return rows


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text.replace(",", "")))
    except ValueError:
        return False


_THINK = re.compile(r"</?think>")
_CALCULATOR = re.compile(r"<<[^<>]*=[^<>]*>>")  # every one of the 23,716 in GSM8K train has an =


def split_gsm8k(solution: str, source: str = "gsm8k") -> tuple[str, str]:
    """A GSM8K worked solution -> (working, final answer): the text before and after the last
    '####', the calculator annotations `<<48/2=24>>` dropped from the working. DataError without '####'."""
    if "####" not in solution:
        raise DataError(f"{source}: answer without '####' in {solution[:60]!r}; is this GSM8K's format?")
    working, final = solution.rsplit("####", 1)
    return _CALCULATOR.sub("", working).strip(), final.strip()


def _stage_rows(cfg: DatasetConfig, wanted: dict[str, str], gsm8k: dict[str, str]) -> list[dict]:
    """The rows of `cfg` (its `rows` slice first) with the stage's column names. For answer_format
    gsm8k, `gsm8k` says which stage column gets 'question' / 'working' / 'answer' of each row."""
    rows = load_rows(cfg.path, name=cfg.name, split=cfg.split, on_bad_row=cfg.on_bad_row)
    if cfg.rows is not None:
        rows = _nonempty(rows[row_slice(cfg.rows)], f"rows {cfg.rows}", cfg.path)
    if cfg.answer_format == "plain":
        return select_columns(rows, wanted, cfg.columns, cfg.path, cfg.on_bad_row)
    out = []
    for r in select_columns(rows, EVAL_COLUMNS, cfg.columns, cfg.path, cfg.on_bad_row, "gsm8k"):
        working, final = split_gsm8k(r["answer"], cfg.path)
        parts = {"question": r["question"], "working": working, "answer": final}
        out.append({ours: parts[theirs] for theirs, ours in gsm8k.items()})
    return out


def sft_texts(cfg: DatasetConfig, tokenizer: Any, max_seq_length: int) -> list[str]:
    """SFT rows rendered in the reasoning format, with the recipe's filters:
    numeric answers only, `<think>` tags stripped, at most max_seq_length/2 tokens."""
    source = cfg.path
    rows = _stage_rows(cfg, SFT_COLUMNS, {"question": "problem", "working": "solution", "answer": "answer"})
    rows = _nonempty([r for r in rows if _is_number(r["answer"])], "numeric answer", source)
    texts = []
    for r in rows:
        working = _THINK.sub("", r["solution"]).strip()
        messages = prompt_messages(r["problem"]) + [
            {"role": "assistant", "content": render_solution(working, r["answer"].strip())}
        ]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    texts = _nonempty(
        [t for t, n in zip(texts, lengths, strict=True) if n <= max_seq_length // 2],
        "length <= max_seq_length/2",
        source,
    )
    texts = texts[: cfg.limit] if cfg.limit else texts
    log.info("SFT data: %d rows kept of %d read from %s", len(texts), len(lengths), source)
    return texts


def prompt_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens of a rendered prompt, generation prompt included (what the trainer will feed)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def grpo_prompts(
    cfg: DatasetConfig, tokenizer: Any, quantile: float, max_length: int | None = None
) -> tuple[list[dict], int]:
    """GRPO rows {prompt: messages, answer} with prompts above the length quantile, or above
    `max_length` tokens where that is lower (what fits beside the completions), dropped.

    Returns the rows and the cut: the longest prompt length kept, in tokens."""
    source = cfg.path
    rows = _stage_rows(cfg, GRPO_COLUMNS, {"question": "prompt", "answer": "answer"})
    items = [{"prompt": prompt_messages(r["prompt"]), "answer": r["answer"].strip()} for r in rows]
    lengths = [prompt_length(tokenizer, it["prompt"]) for it in items]
    cut = sorted(lengths)[max(0, math.ceil(quantile * len(lengths)) - 1)]
    why = f"the {quantile:g} length quantile"
    if max_length is not None and max_length < cut:
        cut, why = max_length, "max_prompt_length"
    items = _nonempty(
        [it for it, n in zip(items, lengths, strict=True) if n <= cut], f"prompt length <= {cut} tokens", source
    )
    dropped = len(lengths) - len(items)
    items = items[: cfg.limit] if cfg.limit else items
    log.info(
        "GRPO data: %d prompts kept of %d (%d longer than %d tokens, %s, dropped)",
        len(items),
        len(lengths),
        dropped,
        cut,
        why,
    )
    return items, cut


def eval_problems(cfg: EvalDatasetConfig, limit: int | None) -> list[dict[str, str]]:
    """Held-out problems {question, answer}; GSM8K answers reduced to the text after '####'. The
    first `limit` (eval.limit, which overrides the dataset's own), else the first `cfg.limit`, else all."""
    return eval_selection(cfg, limit)[0]


def eval_selection(cfg: EvalDatasetConfig, limit: int | None) -> tuple[list[dict[str, str]], bool]:
    """`eval_problems`, and whether they are the very problems of a full evaluation (no eval.limit):
    a `limit` at or above the dataset's size, or equal to the dataset's own limit, leaves out none."""
    source = f"eval dataset '{cfg.name}' ({cfg.path})"
    rows = load_rows(cfg.path, name=cfg.config, split=cfg.split, on_bad_row=cfg.on_bad_row)
    rows = select_columns(rows, EVAL_COLUMNS, cfg.columns, source, cfg.on_bad_row, cfg.answer_format)
    if cfg.answer_format == "gsm8k":
        for r in rows:
            r["answer"] = split_gsm8k(r["answer"], source)[1]
    chosen, full = rows[: limit or cfg.limit or None], rows[: cfg.limit or None]
    return chosen, len(chosen) == len(full)  # both are the first rows: the same length, the same problems
