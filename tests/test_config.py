"""Recipes: every shipped YAML loads; unknown keys, wrong types and broken invariants stop early."""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import typing
from pathlib import Path

import pytest

from trainer.config import RunConfig, load_config, parse_overrides
from trainer.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert cfg.run_name


def test_reference_recipe_numbers() -> None:
    cfg = load_config(ROOT / "configs/qwen3-4b.yaml")
    assert cfg.model.name == "unsloth/Qwen3-4B-Base"
    assert (cfg.model.max_seq_length, cfg.lora.r, cfg.lora.alpha, cfg.seed) == (2048, 32, 64, 3407)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    s, g = cfg.sft, cfg.grpo
    assert (s.learning_rate, s.num_train_epochs, s.per_device_train_batch_size, s.warmup_steps) == (2e-4, 2, 1, 5)
    assert (s.optim, s.weight_decay, s.lr_scheduler_type) == ("adamw_8bit", 0.001, "linear")
    assert (g.learning_rate, g.weight_decay, g.warmup_ratio, g.optim) == (5e-6, 0.001, 0.1, "adamw_8bit")
    assert (g.num_generations, g.per_device_train_batch_size, g.temperature, g.min_p) == (4, 4, 1.0, 0.1)
    assert (g.max_steps, g.save_steps, g.prompt_length_quantile) == (100, 5, 0.9)  # a kill loses <= 5 steps
    assert g.max_prompt_length is None and g.max_completion_length is None  # derived from the data
    assert (cfg.infer.temperature, cfg.infer.top_k, cfg.infer.max_new_tokens) == (1.0, 50, 2048)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_closest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'grpo.learnig_rate'; did you mean 'grpo.learning_rate'"):
        load_config(write(tmp_path, "grpo:\n  learnig_rate: 1.0e-5\n"))


def test_unknown_top_level_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'sed'; did you mean 'seed'"):
        load_config(write(tmp_path, "sed: 1\n"))


def test_inline_mapping_without_quotes_says_how_to_quote() -> None:
    # What `make SET="eval.datasets=[{"name":gsm8k}]"` delivers once the shell has eaten the quotes.
    with pytest.raises(ConfigError, match=r"unknown config key 'eval.datasets\[0\].name:gsm8k'.*single quotes: SET='"):
        load_config("configs/tiny.yaml", ["eval.datasets=[{name:gsm8k,path:data/eval/gsm8k_test.jsonl}]"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seed: abc\n", r"'seed' must be an integer, got 'abc'"),
        ("grpo:\n  max_steps: 1.5\n", r"'grpo.max_steps' must be an integer"),
        ("lora:\n  target_modules: q_proj\n", r"'lora.target_modules' must be a list of a string"),
        ("backend: jax\n", r"'backend' must be one of 'hf', 'unsloth'"),
        ("sft: 3\n", r"'sft' must be a mapping"),
        ("grpo:\n  use_vllm: yes please\n", r"'grpo.use_vllm' must be true/false"),
        ("model:\n  max_seq_length: true\n", r"'model.max_seq_length' must be an integer, got True"),
    ],
)
def test_wrong_type_names_key_and_type(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_float_written_without_dot(tmp_path: Path) -> None:
    # YAML 1.1 reads 2e-4 as a string; a float field accepts it.
    assert load_config(write(tmp_path, "sft:\n  learning_rate: 2e-4\n")).sft.learning_rate == 2e-4


def test_overrides_parse_and_validate() -> None:
    assert parse_overrides(["a.b=1", "c=x", "d=[1, 2]"]) == {"a": {"b": 1}, "c": "x", "d": [1, 2]}
    cfg = load_config(ROOT / "configs/tiny.yaml", ["grpo.max_steps=7", "eval.models=[base]", "seed=1"])
    assert (cfg.grpo.max_steps, cfg.eval.models, cfg.seed) == (7, ["base"], 1)
    with pytest.raises(ConfigError, match="grpo.max_stepz"):
        load_config(ROOT / "configs/tiny.yaml", ["grpo.max_stepz=7"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(None, ["grpo.max_steps"])


def test_invariants(tmp_path: Path) -> None:
    # The batch geometry depends on the process count: checked at GRPO's start (tests/test_distributed.py).
    load_config(None, ["grpo.num_generations=4", "grpo.per_device_train_batch_size=2"])
    with pytest.raises(ConfigError, match="one weight per reward"):
        load_config(None, ["grpo.reward_weights=[1.0]"])
    with pytest.raises(
        ConfigError, match="unknown reward 'check_answers' in the default set; did you mean 'check_answer'"
    ):
        load_config(None, ["grpo.rewards=[check_answers]"])


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"r.yaml:2 is not valid YAML"):
        load_config(write(tmp_path, "a: 1\n b: [\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lora.r=-1", r"'lora.r' must be at least 1, got -1"),
        ("sft.learning_rate=-1", r"'sft.learning_rate' must be above 0, got -1.0"),
        ("grpo.learning_rate=0", r"'grpo.learning_rate' must be above 0, got 0.0"),
        ("lora.dropout=1.0", r"'lora.dropout' must be at least 0 and below 1, got 1.0"),
        ("grpo.min_p=1.5", r"'grpo.min_p' must be at least 0 and at most 1, got 1.5"),
        ("grpo.top_p=0", r"'grpo.top_p' must be above 0 and at most 1"),
        ("grpo.num_generations=1", r"'grpo.num_generations' must be at least 2"),
        ("sft.per_device_train_batch_size=0", r"'sft.per_device_train_batch_size' must be at least 1"),
        ("sft.max_steps=-2", r"'sft.max_steps' must be at least -1"),
        ("grpo.max_steps=0", r"'grpo.max_steps' must be at least 1"),
        ("model.max_seq_length=0", r"'model.max_seq_length' must be at least 1"),
        ("eval.num_samples=-1", r"'eval.num_samples' must be at least 0"),
        ("grpo.prompt_length_quantile=0", r"'grpo.prompt_length_quantile' must be above 0 and at most 1"),
        ("grpo.log_completions_steps=-1", r"'grpo.log_completions_steps' must be at least 0"),
        ("seed=-1", r"'seed' must be at least 0"),
        ("grpo.dataset.limit=0", r"'grpo.dataset.limit' must be at least 1"),
        ("eval.datasets=[{name: a, path: b.jsonl, limit: 0}]", r"'eval.datasets\[0\].limit' must be at least 1"),
        ("sft.max_steps=0", r"'sft.max_steps' must be -1 \(run num_train_epochs\) or at least 1, got 0"),
        ("sft.learning_rate=.inf", r"'sft.learning_rate' must be a finite number, got inf"),
        ("grpo.temperature=.nan", r"'grpo.temperature' must be a finite number, got nan"),
        ("sft.num_train_epochs=inf", r"'sft.num_train_epochs' must be a finite number, got 'inf'"),
        ("grpo.reward_error_score=-.inf", r"'grpo.reward_error_score' must be a finite number, got -inf"),
        ("grpo.reward_weights=[1, .nan, 1, 1]", r"'grpo.reward_weights\[1\]' must be a finite number, got nan"),
    ],
)
def test_numbers_out_of_range_are_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/tiny.yaml", [override])


def _numeric_fields(cls: type, prefix: str = "") -> typing.Iterator[tuple[str, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) or (tp,)
        if typing.get_origin(tp) is list and dataclasses.is_dataclass(args[0]):
            yield from _numeric_fields(args[0], f"{prefix}{f.name}[].")
        elif dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{prefix}{f.name}.")
        elif any(a in (int, float) for a in args):
            yield prefix + f.name, f


def test_every_numeric_key_declares_its_range() -> None:
    unbounded = {"grpo.reward_error_score"}  # any score is a valid choice
    missing = [k for k, f in _numeric_fields(RunConfig) if "range" not in f.metadata and k not in unbounded]
    assert missing == []
    assert len(list(_numeric_fields(RunConfig))) > 40


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.max_seq_length=64", "grpo.max_prompt_length=16", "grpo.max_completion_length=49"],
            "grpo.max_prompt_length 16 + grpo.max_completion_length 49 = 65 does not fit model.max_seq_length 64",
        ),
        (["model.max_seq_length=64", "grpo.max_completion_length=64"], "grpo.max_completion_length 64 leaves no room"),
        (["model.max_seq_length=64", "grpo.max_prompt_length=80"], "grpo.max_prompt_length 80 leaves no room"),
    ],
)
def test_lengths_that_cannot_fit_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ROOT / "configs/tiny.yaml", overrides)
    load_config(ROOT / "configs/tiny.yaml", ["model.max_seq_length=64", "grpo.max_prompt_length=16"])


@pytest.mark.parametrize(
    ("overrides", "columns"),
    [
        # One entry per override, dotted into the mapping: no spaces, so it survives make's SET="..." split.
        (["grpo.dataset.columns.prompt=question"], {"answer": "solution", "prompt": "question"}),
        (["grpo.dataset.columns.prompt=q", "grpo.dataset.columns.answer=final"], {"answer": "final", "prompt": "q"}),
        (["grpo.dataset.columns={prompt: q, answer: final}"], {"answer": "final", "prompt": "q"}),
    ],
)
def test_column_mapping_overrides(overrides: list[str], columns: dict[str, str]) -> None:
    assert load_config(ROOT / "configs/tiny.yaml", overrides).grpo.dataset.columns == columns


def test_column_mapping_without_space_says_how() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs/tiny.yaml", ["grpo.dataset.columns={prompt:question}"])
    assert str(e.value) == (
        "config key 'grpo.dataset.columns': 'prompt:question' needs a space after the colon ({prompt: question}); "
        "on the command line set one entry at a time: grpo.dataset.columns.prompt=question."
    )


def make_args(target: str, sets: str) -> list[str]:
    """The arguments `make TARGET SET=...` passes to `python -m trainer` (make -n, split as the shell does)."""
    res = subprocess.run(
        ["make", "-n", "-s", target, "RUNNER=local", f"SET={sets}", "VENV=/nonexistent-venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    [line] = [ln for ln in res.stdout.splitlines() if f" -m trainer {target} " in ln]
    return shlex.split(line)[3:]  # after "/nonexistent-venv/bin/python -m trainer"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_column_mapping_through_make_set() -> None:
    """The documented form goes through the Makefile's SET splitting and the CLI's parser intact."""
    from trainer.cli import parse_args

    args = parse_args(
        make_args("demo", "grpo.dataset.columns.prompt=question grpo.dataset.columns.answer=final eval.limit=3")
    )
    cfg = load_config(ROOT / args.config, args.overrides)
    assert cfg.grpo.dataset.columns == {"answer": "final", "prompt": "question"} and cfg.eval.limit == 3


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_list_of_mappings_through_make_set(capsys: pytest.CaptureFixture) -> None:
    """The form the Makefile help and the error give (no spaces, keys quoted) arrives whole; one with
    spaces, which make cuts at each space, stops with that form (exit 2) before anything loads."""
    from trainer.cli import main, parse_args
    from trainer.config.loading import WHOLE_VALUE

    sets = WHOLE_VALUE.removeprefix("SET='").removesuffix("'")
    args = parse_args(make_args("eval", f"{sets} eval.limit=5"))
    cfg = load_config(ROOT / args.config, args.overrides)
    assert [(d.name, d.path, d.answer_format) for d in cfg.eval.datasets] == [
        ("gsm8k", "data/eval/gsm8k_test.jsonl", "gsm8k")
    ] and cfg.eval.limit == 5

    assert main(make_args("eval", "eval.datasets=[{name: gsm8k, path: data/eval/gsm8k_test.jsonl}]")) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --set 'eval.datasets=[{name:' is not a whole value: make's SET splits at every space. Write the "
        f"value without spaces, keys in double quotes, SET in single quotes: {WHOLE_VALUE} (without make: quote "
        "the whole --set argument).\n"
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_passes_prompt_and_set_values_as_typed(tmp_path: Path) -> None:
    """PROMPT reaches `trainer infer` as typed (make would read "$15" as its variable $1, a shell would
    drop the quotes), and a SET value with braces is one argument (no brace expansion)."""
    venv = tmp_path / "venv"  # a stand-in interpreter that prints its arguments
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text('#!/bin/sh\nfor a in "$@"; do printf \'%s\\n\' "$a"; done\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: make setup has nothing to do
    prompt = 'A pen costs $15. He said "hi", {a,b} * `x`'
    res = subprocess.run(
        ["make", "-s", "infer", "RUNNER=local", f"VENV={venv}", f"PROMPT={prompt}", "SET=eval.datasets=[{a,b}]"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    argv = res.stdout.splitlines()
    assert argv[argv.index("--prompt") + 1] == prompt
    assert argv[argv.index("--set") + 1] == "eval.datasets=[{a,b}]"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["backend=unsloth"], r"backend unsloth cannot load a GGUF \(model.gguf_file\); convert the GGUF"),
        (["grpo.use_vllm=true"], r"grpo.use_vllm loads HF weights, not a GGUF"),
        (["model.init=tiny"], r"model.gguf_file needs model.init: pretrained"),
        (["sft.dataset.rows=0-1500"], r"dataset rows '0-1500' is not a slice 'start:stop'"),
        (["grpo.dataset.rows=a:b"], r"dataset rows 'a:b' is not a slice"),
    ],
)
def test_gguf_and_row_slice_invariants(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["model.name=/models/q", "model.gguf_file=q.gguf", *overrides])


# (override, what the one-line error must say): values that would run on, then fail late or write
# somewhere unexpected.
REFUSED = {
    "unknown tracker": (
        "report_to=[nope]",
        "report_to: unknown tracker 'nope'; valid: tensorboard, wandb, trackio, none",
    ),
    "run_name climbing out": ("run_name=../../etc", "run_name '../../etc' is not one folder name"),
    "run_name with a separator": ("run_name=a/b", "run_name 'a/b' is not one folder name"),
    "empty run_name": ("run_name=", "run_name '' is not one folder name"),
    "hidden run_name": ("run_name=.x", "run_name '.x' is not one folder name"),
    "no eval dataset": ("eval.datasets=[]", "eval.datasets is empty; list at least one under eval.datasets"),
    "no eval model": ("eval.models=[]", "eval.models is empty; name at least one of base, sft, grpo"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_values_that_would_fail_late_are_refused_with_the_recipe(case: str) -> None:
    override, message = REFUSED[case]
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(ROOT / "configs/tiny.yaml", [override])


@pytest.mark.parametrize("override", ["report_to=[tensorboard, wandb, trackio]", "report_to=[none]", "report_to=[]",
                                      "run_name=my-run_2.b", "eval.models=[base]"])  # fmt: skip
def test_values_next_to_the_refused_ones_still_load(override: str) -> None:
    load_config(ROOT / "configs/tiny.yaml", [override])


@pytest.mark.parametrize(
    ("name", "local"),
    [
        ("unsloth/Qwen3-4B-Base", False),
        ("Qwen/Qwen2.5-0.5B-Instruct", False),
        ("gpt2", False),
        ("/nope", True),
        ("./m", True),
        ("../m", True),
        ("~/m", True),
        ("checkpoints/models/qwen2.5-coder-0.5b-instruct", True),
        ("models/q/", True),
        ("", True),
    ],
)
def test_a_local_model_path_is_told_from_a_hub_id(name: str, local: bool) -> None:
    from trainer.config.model import looks_local

    assert looks_local(name) is local
