"""Shared fixtures: the repo as working directory, a private checkpoint volume, the tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.distributed import one_gpu_per_process

ROOT = Path(__file__).resolve().parents[1]

# The GPU tests build trainers in this one process: on a machine with several GPUs, transformers would
# wrap their models in DataParallel. The product's own rule applies (GPU 0 only), before CUDA starts.
one_gpu_per_process()


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    # Recipes name data files relative to the repo root, as `make` runs them.
    monkeypatch.chdir(ROOT)


@pytest.fixture
def volume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty CHECKPOINT_DIR for one test."""
    path = tmp_path / "checkpoints"
    monkeypatch.setenv("CHECKPOINT_DIR", str(path))
    monkeypatch.setenv("TRAINER_ENV_FILE", str(tmp_path / "no.env"))
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 + tokenizer, built once per session through the product's own builder."""
    from trainer.tiny import ensure_tiny_model

    return ensure_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3")


@pytest.fixture
def tiny_overrides(tiny_model_dir: Path) -> list[str]:
    """Overrides that make configs/tiny.yaml fast enough for a test: a few steps, short outputs."""
    return [
        f"model.name={tiny_model_dir}",
        "sft.max_steps=2",
        "sft.logging_steps=1",
        "grpo.max_steps=2",
        "grpo.save_steps=1",
        "grpo.max_completion_length=16",
        "grpo.log_completions=false",
        "eval.limit=4",
        "eval.max_new_tokens=16",
        "eval.num_samples=1",
        "infer.max_new_tokens=16",
    ]


@pytest.fixture(scope="module")
def sft_volume(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A checkpoint volume holding a real one-step SFT run of configs/tiny.yaml (adapter, checkpoint,
    run record), made once per test module for tests that need earlier work to start from."""
    from trainer.cli import main

    volume = tmp_path_factory.mktemp("sft-volume")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        mp.setenv("CHECKPOINT_DIR", str(volume))
        args = ["--set", f"model.name={tiny_model_dir}", "--set", "sft.max_steps=1", "--set", "report_to=[]"]
        assert main(["sft", "--config", "configs/tiny.yaml", *args]) == 0
    return volume
