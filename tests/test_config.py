"""Recipes: every shipped YAML loads; unknown keys, wrong types and broken invariants stop early."""

from __future__ import annotations

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
    assert (g.max_steps, g.save_steps, g.prompt_length_quantile) == (100, 100, 0.9)
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
