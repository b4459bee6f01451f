"""Typed recipes: one YAML file per model/preset under `configs/`, validated before anything loads.

A recipe maps onto `RunConfig` below; every field has a `help`. Unknown keys and wrong types stop
the run with an error naming the key (and the closest valid key), before any model or dataset is
touched. `--set a.b=value` overrides are parsed as YAML scalars and validated the same way.

Longer than the other modules (about 540 lines) on purpose: the whole recipe schema, every field with
its help, default and range, is one file a user can read top to bottom (as TRL keeps a trainer's
config in one file); the loading and validation below it are about 140 of those lines.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from trainer.errors import ConfigError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _f(
    default: Any = dataclasses.MISSING,
    help: str = "",  # noqa: A002
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A dataclass field with a help text and, for a number, its valid range (checked by `_build`
    before anything loads; None is always allowed where the type allows it). Mutable defaults go
    through a factory."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    metadata = {"help": help, "range": bounds} if bounds else {"help": help}
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        value = default
        return field(default_factory=lambda: copy.deepcopy(value), metadata=metadata)
    return field(default=default, metadata=metadata)


_BOUND_TEXT = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
_BOUND_OK = {
    "ge": lambda v, b: v >= b,
    "gt": lambda v, b: v > b,
    "le": lambda v, b: v <= b,
    "lt": lambda v, b: v < b,
}


def check_range(f: dataclasses.Field, value: Any, key: str) -> None:
    """Raise ConfigError when a number is outside the field's declared range (see `_f`)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    bounds = f.metadata.get("range", {})
    broken = [k for k, b in bounds.items() if not _BOUND_OK[k](value, b)]
    if broken:
        valid = " and ".join(f"{_BOUND_TEXT[k]} {bounds[k]}" for k in bounds)
        raise ConfigError(f"config key '{key}' must be {valid}, got {value!r}.")


@dataclass
class ModelConfig:
    name: str = _f("unsloth/Qwen3-4B-Base", "Hub id or local path of the base causal LM.")
    init: Literal["pretrained", "tiny"] = _f(
        "pretrained",
        "'tiny': build a tiny random Qwen3 model and tokenizer at `name` if it does not exist yet "
        "(the embedded default); 'pretrained': load `name` as it is.",
    )
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of the base model.")
    gguf_file: str | None = _f(
        None,
        "A GGUF file to load instead of HF weights: its name inside the folder `name` (or an absolute "
        "path). Loaded by transformers, every weight dequantized to `dtype`; backend hf only (convert it "
        "for unsloth: scripts/fetch_gguf_model.py --gguf FILE --out DIR, then model.name=DIR).",
    )
    max_seq_length: int = _f(2048, "Longest sequence (prompt + completion) any stage handles.", ge=1)
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _f(
        "auto", "Weights dtype: 'auto' is bfloat16 on a GPU that supports it, else float32."
    )
    load_in_4bit: bool = _f(False, "QLoRA: load the base weights in 4 bit (unsloth backend only).")
    add_format_tokens: bool = _f(
        False,
        "Add the reasoning tags to the vocabulary where the tokenizer lacks them (resizes the "
        "embeddings). Off for the reference recipe: its LoRA does not train embeddings, so the tags "
        "stay plain text there.",
    )
    trust_remote_code: bool = _f(False, "Run model code from the hub repo. Off unless a recipe needs it.")


@dataclass
class LoraConfig:
    r: int = _f(32, "LoRA rank.", ge=1)
    alpha: int = _f(64, "LoRA alpha (scale = alpha / r).", gt=0)
    dropout: float = _f(0.0, "LoRA dropout.", ge=0, lt=1)
    target_modules: list[str] = _f(LORA_TARGETS, "Module names that get LoRA adapters.")
    gradient_checkpointing: bool = _f(True, "Recompute activations in the backward pass to save memory.")


@dataclass
class DatasetConfig:
    path: str = _f("", "Hub dataset id, or a local .jsonl / .parquet file.")
    name: str | None = _f(None, "Hub dataset config name (e.g. 'en', 'main').")
    split: str = _f("train", "Hub split. Ignored for local files.")
    columns: dict[str, str] = _f(
        {}, "Mapping from this stage's column names to the dataset's (e.g. {answer: solution})."
    )
    rows: str | None = _f(
        None,
        "A slice 'start:stop' of the dataset's rows, taken first (before filters and limit), e.g. '0:1500' "
        "for one stage and '1500:' for the other: two stages that never see the same row.",
    )
    answer_format: Literal["plain", "gsm8k"] = _f(
        "plain",
        "'gsm8k': rows are GSM8K's {question, answer}, the answer a worked solution ending in "
        "'#### <answer>': the question is the problem (SFT) or prompt (GRPO), the text after '####' the "
        "answer, and the working before it, calculator annotations <<...>> removed, the SFT solution.",
    )
    limit: int | None = _f(None, "Use at most this many rows (after filters).", ge=1)
    on_bad_row: Literal["error", "skip"] = _f(
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


@dataclass
class SFTConfig:
    dataset: DatasetConfig = _f(
        DatasetConfig(path="unsloth/OpenMathReasoning-mini", split="cot"),
        "SFT data: columns problem, solution, answer.",
    )
    learning_rate: float = _f(2e-4, "Peak learning rate.", gt=0)
    num_train_epochs: float = _f(2.0, "Epochs over the SFT data (ignored when max_steps > 0).", gt=0)
    max_steps: int = _f(-1, "Stop after this many optimizer steps; -1 runs num_train_epochs.", ge=-1)
    per_device_train_batch_size: int = _f(1, "Sequences per device per micro-batch.", ge=1)
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.", ge=1)
    warmup_steps: int = _f(5, "Linear warmup steps.", ge=0)
    optim: str = _f("adamw_8bit", "Optimizer name (transformers). adamw_8bit needs bitsandbytes (GPU).")
    weight_decay: float = _f(0.001, "Weight decay.", ge=0)
    lr_scheduler_type: str = _f("linear", "Learning-rate schedule.")
    logging_steps: int = _f(1, "Log every N steps.", ge=1)
    save_steps: int = _f(500, "Write a resumable checkpoint every N steps.", ge=1)
    keep_checkpoints: int = _f(
        2, "Resumable checkpoints kept (the newest verified ones); older ones are deleted. At least 1.", ge=1
    )


@dataclass
class GRPOConfig:
    dataset: DatasetConfig = _f(
        DatasetConfig(path="open-r1/DAPO-Math-17k-Processed", name="en", columns={"answer": "solution"}),
        "GRPO data: columns prompt, answer.",
    )
    start_from: str | None = _f(
        None, "Adapter to start from; default: this run's SFT adapter on the checkpoint volume."
    )
    learning_rate: float = _f(5e-6, "Peak learning rate.", gt=0)
    weight_decay: float = _f(0.001, "Weight decay.", ge=0)
    warmup_ratio: float = _f(0.1, "Share of steps spent in linear warmup.", ge=0, lt=1)
    lr_scheduler_type: str = _f("linear", "Learning-rate schedule.")
    optim: str = _f("adamw_8bit", "Optimizer name (transformers).")
    max_steps: int = _f(100, "Optimizer steps.", ge=1)
    save_steps: int = _f(100, "Write a resumable checkpoint every N steps.", ge=1)
    keep_checkpoints: int = _f(
        2, "Resumable checkpoints kept (the newest verified ones); older ones are deleted. At least 1.", ge=1
    )
    logging_steps: int = _f(1, "Log every N steps.", ge=1)
    num_generations: int = _f(4, "Completions sampled per prompt (the GRPO group).", ge=2)
    per_device_train_batch_size: int = _f(
        4,
        "Completions per device per micro-batch. per_device_train_batch_size x processes x "
        "gradient_accumulation_steps must be a multiple of num_generations (checked at start).",
        ge=1,
    )
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.", ge=1)
    temperature: float = _f(1.0, "Sampling temperature of rollouts.", gt=0)
    top_p: float = _f(1.0, "Nucleus sampling of rollouts.", gt=0, le=1)
    top_k: int = _f(0, "Top-k sampling of rollouts (0: off).", ge=0)
    min_p: float | None = _f(0.1, "Min-p sampling of rollouts.", ge=0, le=1)
    prompt_length_quantile: float = _f(
        0.9, "Prompts longer than this quantile of prompt token lengths are dropped.", gt=0, le=1
    )
    max_prompt_length: int | None = _f(None, "Longest prompt in tokens; default: the quantile cut above + 1.", ge=1)
    max_completion_length: int | None = _f(
        None, "Longest completion in tokens; default: max_seq_length - max_prompt_length.", ge=1
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = _f(
        "dapo", "GRPO loss normalisation (TRL loss_type). Stated here because Unsloth changes it silently."
    )
    beta: float = _f(0.0, "KL coefficient; 0 loads no reference model.", ge=0)
    epsilon: float = _f(0.2, "PPO clip range.", ge=0)
    epsilon_high: float | None = _f(
        None,
        "Upper clip range; default: epsilon. Always passed to the trainer, because Unsloth sets 0.28 "
        "(the DAPO paper's) for loss_type dapo when it is left unset.",
        ge=0,
    )
    scale_rewards: Literal["group", "batch", "none"] = _f("group", "Advantage scaling.")
    mask_truncated_completions: bool = _f(
        False,
        "Exclude completions cut at max_completion_length from the loss. Always passed to the trainer, "
        "because Unsloth sets true for loss_type dapo when it is left unset.",
    )
    reward_set: Literal["default", "seed"] = _f(
        "default", "'seed': the reference recipe's rewards as they are; 'default': the same with defects fixed."
    )
    rewards: list[str] = _f(
        ["match_format_exactly", "match_format_approximately", "check_answer", "check_numbers"],
        "Reward functions by name, from the chosen set.",
    )
    reward_weights: list[float] | None = _f(None, "One weight per reward; default all 1.0.")
    reward_error_score: float = _f(-5.0, "Score of a completion on which a reward function raised (the run goes on).")
    use_vllm: bool = _f(
        False, "Generate rollouts with vLLM where it imports (the GPU image); the model's generate otherwise."
    )
    vllm_importance_sampling_correction: bool = _f(
        False,
        "Correct for the gap between vLLM's and the trainer's token probabilities (TRL's default is on, "
        "Unsloth's off; off is what the reference recipe ran).",
    )
    vllm_mode: Literal["colocate", "server"] = _f(
        "colocate", "vLLM in the trainer process, or a trl vllm-serve server."
    )
    vllm_gpu_memory_utilization: float | None = _f(
        None,
        "Share of GPU memory vLLM may take (colocate); default: 0.9 on backend unsloth (vLLM holds the "
        "only copy of the weights), 0.3 on hf (TRL's: vLLM's copy sits beside the trainer's).",
        gt=0,
        le=1,
    )
    vllm_server_host: str = _f(
        "0.0.0.0",
        "Host of the `trl vllm-serve` server (vllm_mode: server); 'vllm' is the compose service (docs/scaling.md).",
    )
    vllm_server_port: int = _f(8000, "Port of the `trl vllm-serve` server (vllm_mode: server).", ge=1, le=65535)
    rollout_engine: Literal["trl", "fast"] = _f(
        "fast",
        "Rollouts when vLLM is off, on backend hf: 'fast' decodes with trainer.rollout (static KV cache, "
        "one CUDA-graph decode step per token; same tokens as generate under greedy decoding; "
        "docs/benchmarks.md); 'trl': TRL's call of the model's generate. Backend unsloth uses its own.",
    )
    log_completions: bool = _f(
        False,
        "Print TRL's table of sample completions at each log step (and send it to W&B / trackio). Off by "
        "default: the tables swamp the log; the same rollouts go to grpo/completions.jsonl (log_completions_steps).",
    )
    log_completions_steps: int = _f(
        10,
        "Every N steps, append the latest rollouts (prompt, completion, each reward, advantage) to "
        "grpo/completions.jsonl on the volume; 0: never.",
        ge=0,
    )


@dataclass
class EvalDatasetConfig:
    name: str = _f("", "Short name used in reports (e.g. gsm8k).")
    path: str = _f("", "Hub dataset id, or a local .jsonl / .parquet file.")
    config: str | None = _f(None, "Hub dataset config name.")
    split: str = _f("test", "Hub split.")
    columns: dict[str, str] = _f({}, "Mapping from question/answer to the dataset's columns.")
    answer_format: Literal["plain", "gsm8k"] = _f(
        "plain", "'gsm8k': the answer column is a worked solution ending in '#### <answer>'."
    )
    limit: int | None = _f(None, "Evaluate only the first N problems.", ge=1)
    on_bad_row: Literal["error", "skip"] = _f(
        "error", "A malformed or empty row: 'error' stops with file:line, 'skip' logs and skips it."
    )


@dataclass
class EvalConfig:
    datasets: list[EvalDatasetConfig] = _f(
        [
            EvalDatasetConfig(name="gsm8k", path="openai/gsm8k", config="main", answer_format="gsm8k"),
            EvalDatasetConfig(name="math500", path="HuggingFaceH4/MATH-500", columns={"question": "problem"}),
        ],
        "Held-out problem sets.",
    )
    models: list[Literal["base", "sft", "grpo"]] = _f(
        ["base", "sft", "grpo"], "Which models to compare: the base model and this run's adapters."
    )
    max_new_tokens: int = _f(1024, "Completion budget per problem.", ge=1)
    batch_size: int = _f(16, "Prompts per generation batch.", ge=1)
    num_samples: int = _f(1, "Sampled completions per problem for sampled pass@1 (0: greedy only).", ge=0)
    temperature: float = _f(1.0, "Temperature of the sampled pass@1.", gt=0)
    top_k: int = _f(50, "Top-k of the sampled pass@1.", ge=0)
    limit: int | None = _f(None, "Evaluate at most N problems per dataset (overrides each dataset's limit).", ge=1)
    engine: Literal["fast", "generate"] = _f(
        "fast",
        "'fast': on a GPU, generate with trainer.rollout (the fast GRPO rollout engine: CUDA-graph decode "
        "steps, greedy tokens equal generate's) where it supports the model; 'generate': transformers' "
        "generate always (also the fallback on CPU and for other models).",
    )


@dataclass
class InferConfig:
    adapter: str = _f("latest", "'latest', 'grpo', 'sft', 'none' or a path to a PEFT adapter.")
    prompt: str = _f("What is 12*7?", "The problem to solve.")
    temperature: float = _f(1.0, "Sampling temperature (0: greedy).", ge=0)
    top_k: int = _f(50, "Top-k sampling.", ge=0)
    max_new_tokens: int = _f(2048, "Completion budget.", ge=1)


@dataclass
class ExportConfig:
    adapter: str = _f("latest", "'latest', 'grpo', 'sft' or a path to a PEFT adapter.")
    merged: bool = _f(True, "Also write the base model with the adapter merged in, 16 bit.")
    push: bool = _f(False, "Push to the Hugging Face Hub (needs HF_TOKEN).")
    hub_repo: str | None = _f(None, "Hub repo id to push to, e.g. 'me/qwen3-4b-math'.")
    private: bool = _f(True, "Create the Hub repo private.")


@dataclass
class RunConfig:
    run_name: str = _f("default", "Folder under CHECKPOINT_DIR holding this run's stages.")
    seed: int = _f(3407, "Random seed for every stage.", ge=0, le=2**32 - 1)
    backend: Literal["hf", "unsloth"] = _f(
        "hf", "'unsloth': FastLanguageModel on a GPU; 'hf': transformers + PEFT + TRL (CPU or GPU)."
    )
    report_to: list[str] = _f(["tensorboard"], "Trackers: tensorboard, wandb, trackio (or empty).")
    resume: Literal["auto", "fresh", "anyway"] = _f(
        "auto",
        "SFT / GRPO with work already in the stage's folder. 'auto': resume the newest checkpoint when it "
        "was made with the same data, model, LoRA, seed and schedule settings (else stop, naming what "
        "differs); a finished stage does nothing. 'fresh': delete the stage's checkpoints and train from "
        "scratch. 'anyway': resume even where those settings differ.",
    )
    model: ModelConfig = _f(ModelConfig(), "Base model.")
    lora: LoraConfig = _f(LoraConfig(), "LoRA adapter.")
    sft: SFTConfig = _f(SFTConfig(), "Stage 1: supervised format teaching.")
    grpo: GRPOConfig = _f(GRPOConfig(), "Stage 2: reinforcement learning.")
    eval: EvalConfig = _f(EvalConfig(), "Held-out evaluation.")
    infer: InferConfig = _f(InferConfig(), "One-prompt inference.")
    export: ExportConfig = _f(ExportConfig(), "Adapter / merged model export.")

    def __post_init__(self) -> None:
        g = self.grpo
        # The batch against num_generations depends on the process count: distributed.check_batch_geometry.
        if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
            raise ConfigError(
                f"grpo.reward_weights has {len(g.reward_weights)} values for {len(g.rewards)} grpo.rewards; "
                "give one weight per reward."
            )
        from trainer.rewards import reward_names  # light: the symbolic checker loads on first use

        valid = reward_names(g.reward_set)
        for name in g.rewards:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(valid)}."
                raise ConfigError(f"grpo.rewards: unknown reward '{name}' in the {g.reward_set} set; {hint}")
        seq, prompt, completion = self.model.max_seq_length, g.max_prompt_length, g.max_completion_length
        for key, n in (("grpo.max_prompt_length", prompt), ("grpo.max_completion_length", completion)):
            if n is not None and n >= seq:
                raise ConfigError(
                    f"{key} {n} leaves no room in model.max_seq_length {seq} (prompt + completion); "
                    f"lower {key} or raise model.max_seq_length."
                )
        if prompt is not None and completion is not None and prompt + completion > seq:
            raise ConfigError(
                f"grpo.max_prompt_length {prompt} + grpo.max_completion_length {completion} = {prompt + completion} "
                f"does not fit model.max_seq_length {seq}; lower one of them or raise model.max_seq_length."
            )
        if self.model.load_in_4bit and self.backend != "unsloth":
            raise ConfigError("model.load_in_4bit needs backend: unsloth.")
        if self.model.gguf_file is not None:
            self._check_gguf()

    def _check_gguf(self) -> None:
        convert = (
            "convert the GGUF to an HF folder first (python scripts/fetch_gguf_model.py --gguf FILE --out DIR) "
            "and set model.name=DIR without model.gguf_file"
        )
        if self.backend == "unsloth":
            raise ConfigError(f"backend unsloth cannot load a GGUF (model.gguf_file); {convert}.")
        if self.grpo.use_vllm:
            raise ConfigError(f"grpo.use_vllm loads HF weights, not a GGUF (model.gguf_file); {convert}.")
        if self.model.init == "tiny":
            raise ConfigError("model.gguf_file needs model.init: pretrained (init tiny builds its own model).")


# ---------------------------------------------------------------------------------------------
# Loading and validation


def _type_name(tp: Any) -> str:
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string", type(None): "null"}.get(
        tp, str(tp)
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (dicts to dataclasses)."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}.")
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")
        (arg,) = typing.get_args(tp)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}.")
        _, varg = typing.get_args(tp)
        squeezed = [str(k) for k, v in value.items() if v is None and ":" in str(k)]
        if squeezed:  # YAML reads {prompt:question} (no space after the colon) as one key with no value
            name, _, column = squeezed[0].partition(":")
            raise ConfigError(
                f"config key '{key}': '{squeezed[0]}' needs a space after the colon ({{{name}: {column}}}); "
                f"on the command line set one entry at a time: {key}.{name}={column}."
            )
        return {str(k): _coerce(v, varg, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `2e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {value!r}.")


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}."
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}")
        kwargs[key] = _coerce(value, hints[key], prefix + key)
    for f in dataclasses.fields(cls):
        if f.name in kwargs:
            check_range(f, kwargs[f.name], prefix + f.name)
    return cls(**kwargs)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["a.b=1", "c=x"]` -> `{"a": {"b": 1}, "c": "x"}`; values are YAML scalars or lists."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not key=value (e.g. --set grpo.max_steps=10).")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        node = out
        *parents, leaf = key.strip().split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a recipe, apply `key=value` overrides, and validate it. Raises ConfigError."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' not found; pick one of configs/*.yaml.")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{p}:{mark.line + 1}" if mark else str(p)
            raise ConfigError(f"config file {where} is not valid YAML: {getattr(e, 'problem', e)}.") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of keys, not {type(data).__name__}.")
    data = _merge(data, parse_overrides(overrides or []))
    return _build(RunConfig, data)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
