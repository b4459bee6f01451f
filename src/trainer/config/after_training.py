"""The recipe's sections for the stages that use a trained adapter: `eval` (with its datasets),
`infer` and `export`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.config.fields import setting
from trainer.errors import ConfigError


@dataclass
class EvalDatasetConfig:
    name: str = setting("", "Short name used in reports (e.g. gsm8k).")
    path: str = setting("", "Hub dataset id, or a local .jsonl / .parquet file.")
    config: str | None = setting(None, "Hub dataset config name.")
    split: str = setting("test", "Hub split.")
    columns: dict[str, str] = setting({}, "Mapping from question/answer to the dataset's columns.")
    answer_format: Literal["plain", "gsm8k"] = setting(
        "plain", "'gsm8k': the answer column is a worked solution ending in '#### <answer>'."
    )
    limit: int | None = setting(None, "Evaluate only the first N problems.", ge=1)
    on_bad_row: Literal["error", "skip"] = setting(
        "error", "A malformed or empty row: 'error' stops with file:line, 'skip' logs and skips it."
    )


@dataclass
class EvalConfig:
    datasets: list[EvalDatasetConfig] = setting(
        [
            EvalDatasetConfig(name="gsm8k", path="openai/gsm8k", config="main", answer_format="gsm8k"),
            EvalDatasetConfig(name="math500", path="HuggingFaceH4/MATH-500", columns={"question": "problem"}),
        ],
        "Held-out problem sets.",
    )
    models: list[Literal["base", "sft", "grpo"]] = setting(
        ["base", "sft", "grpo"], "Which models to compare: the base model and this run's adapters."
    )
    max_new_tokens: int = setting(1024, "Completion budget per problem.", ge=1)
    batch_size: int = setting(16, "Prompts per generation batch.", ge=1)
    num_samples: int = setting(1, "Sampled completions per problem for sampled pass@1 (0: greedy only).", ge=0)
    temperature: float = setting(1.0, "Temperature of the sampled pass@1.", gt=0)
    top_k: int = setting(50, "Top-k of the sampled pass@1.", ge=0)
    limit: int | None = setting(None, "Evaluate at most N problems per dataset (overrides each dataset's limit).", ge=1)
    engine: Literal["fast", "generate"] = setting(
        "fast",
        "'fast': on a GPU, generate with trainer.rollout (the fast GRPO rollout engine: CUDA-graph decode "
        "steps, greedy tokens equal generate's) where it supports the model; 'generate': transformers' "
        "generate always (also the fallback on CPU and for other models).",
    )
    reuse: bool = setting(
        True,
        "Reuse each finished block (model x dataset x greedy / sampled) of an earlier eval of this run "
        "whose inputs are unchanged (eval/blocks/); false: compute every block again.",
    )

    def __post_init__(self) -> None:
        # An empty list would evaluate nothing and still write a report that looks finished.
        if not self.datasets:
            raise ConfigError(
                "eval.datasets is empty; list at least one under eval.datasets in the recipe, e.g. "
                "{name: gsm8k, path: data/eval/gsm8k_test.jsonl, answer_format: gsm8k}."
            )
        if not self.models:
            raise ConfigError("eval.models is empty; name at least one of base, sft, grpo (e.g. eval.models=[base]).")


@dataclass
class InferConfig:
    adapter: str = setting("latest", "'latest', 'grpo', 'sft', 'none' or a path to a PEFT adapter.")
    prompt: str = setting("What is 12*7?", "The problem to solve.")
    temperature: float = setting(1.0, "Sampling temperature (0: greedy).", ge=0)
    top_k: int = setting(50, "Top-k sampling.", ge=0)
    max_new_tokens: int = setting(2048, "Completion budget.", ge=1)


@dataclass
class ExportConfig:
    adapter: str = setting("latest", "'latest', 'grpo', 'sft' or a path to a PEFT adapter.")
    merged: bool = setting(True, "Also write the base model with the adapter merged in, 16 bit.")
    push: bool = setting(False, "Push to the Hugging Face Hub (needs HF_TOKEN).")
    hub_repo: str | None = setting(None, "Hub repo id to push to, e.g. 'me/qwen3-4b-math'.")
    private: bool = setting(True, "Create the Hub repo private.")
