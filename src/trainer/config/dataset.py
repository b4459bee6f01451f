"""A training dataset (`sft.dataset`, `grpo.dataset`): where it is, which rows, which columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.config.fields import setting
from trainer.errors import ConfigError


@dataclass
class DatasetConfig:
    path: str = setting("", "Hub dataset id, or a local .jsonl / .parquet file.")
    name: str | None = setting(None, "Hub dataset config name (e.g. 'en', 'main').")
    split: str = setting("train", "Hub split. Ignored for local files.")
    columns: dict[str, str] = setting(
        {}, "Mapping from this stage's column names to the dataset's (e.g. {answer: solution})."
    )
    rows: str | None = setting(
        None,
        "A slice 'start:stop' of the dataset's rows, taken first (before filters and limit), e.g. '0:1500' "
        "for one stage and '1500:' for the other: two stages that never see the same row.",
    )
    answer_format: Literal["plain", "gsm8k"] = setting(
        "plain",
        "'gsm8k': rows are GSM8K's {question, answer}, the answer a worked solution ending in "
        "'#### <answer>': the question is the problem (SFT) or prompt (GRPO), the text after '####' the "
        "answer, and the working before it, calculator annotations <<...>> removed, the SFT solution.",
    )
    limit: int | None = setting(None, "Use at most this many rows (after filters).", ge=1)
    on_bad_row: Literal["error", "skip"] = setting(
        "error",
        "A malformed row in a local file, or a row with an empty value: 'error' stops with file:line, "
        "'skip' logs and skips it.",
    )

    def __post_init__(self) -> None:
        if self.rows is not None:
            row_slice(self.rows)  # a bad slice stops here, before any data loads


def row_slice(text: str) -> slice:
    """'start:stop' (either may be empty) -> slice; ConfigError for anything else."""
    start, sep, stop = text.partition(":")
    try:
        if not sep or ":" in stop:
            raise ValueError
        return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise ConfigError(f"dataset rows '{text}' is not a slice 'start:stop', e.g. '0:1500' or '1500:'.") from None
