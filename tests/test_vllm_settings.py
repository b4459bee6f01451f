"""What the recipe hands to vLLM, read on a CPU without vLLM: TRL's GRPOConfig fields (backend hf)
and Unsloth's FastLanguageModel.from_pretrained arguments (backend unsloth, fast_inference)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.config import load_config
from trainer.errors import UserError
from trainer.grpo import vllm_args
from trainer.training import check_backend, report_overrides
from trainer.unsloth_backend import from_pretrained_kwargs

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "configs/qwen3-4b.yaml"
TINY = ROOT / "configs/tiny.yaml"


@pytest.mark.parametrize(
    "recipe, overrides, share",
    [
        (REFERENCE, [], 0.9),  # Unsloth: vLLM's share holds the one copy of the weights
        (REFERENCE, ["backend=hf"], 0.3),  # TRL colocate: a second copy beside the trainer's
        (TINY, [], 0.3),
        (TINY, ["backend=unsloth"], 0.9),
        (REFERENCE, ["backend=hf", "grpo.vllm_gpu_memory_utilization=0.5"], 0.5),  # a set value is kept
        (TINY, ["grpo.vllm_gpu_memory_utilization=0.25"], 0.25),
    ],
    ids=["reference", "reference-hf", "tiny", "tiny-unsloth", "hf-set", "tiny-set"],
)
def test_vllm_memory_share_by_backend(recipe: Path, overrides: list[str], share: float, tmp_path: Path) -> None:
    from trl import GRPOConfig

    cfg = load_config(recipe, ["grpo.use_vllm=true", *overrides])
    settings = vllm_args(cfg, vllm=True)
    assert settings["vllm_gpu_memory_utilization"] == share
    assert from_pretrained_kwargs(cfg, "m", fast_inference=True, max_lora_rank=32)["gpu_memory_utilization"] == share
    # TRL takes every field under these names and keeps the values.
    args = GRPOConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **settings)
    assert (args.use_vllm, args.vllm_mode, args.vllm_gpu_memory_utilization) == (True, "colocate", share)
    assert args.vllm_max_model_length == cfg.model.max_seq_length


@pytest.mark.parametrize("vllm", [True, False])
def test_vllm_args_follow_the_rollout_choice(vllm: bool) -> None:
    cfg = load_config(REFERENCE, ["backend=hf"])
    settings = vllm_args(cfg, vllm)
    assert settings["use_vllm"] is vllm
    assert settings["vllm_max_model_length"] == 2048  # no rollout is longer than model.max_seq_length
    assert settings["vllm_importance_sampling_correction"] is False  # the recipe's, not TRL's default (on)
    # TRL's own fields (temperature, top_p, top_k, min_p) and nothing else, on either path.
    assert settings["generation_kwargs"] is None


def test_unsloth_from_pretrained_for_the_reference_recipe() -> None:
    cfg = load_config(REFERENCE)
    kwargs = from_pretrained_kwargs(cfg, "/models/qwen3-4b", fast_inference=True, max_lora_rank=32)
    assert kwargs["model_name"] == "/models/qwen3-4b"
    assert (kwargs["fast_inference"], kwargs["gpu_memory_utilization"], kwargs["max_lora_rank"]) == (True, 0.9, 32)
    assert (kwargs["max_seq_length"], kwargs["load_in_4bit"], kwargs["random_state"]) == (2048, False, 3407)
    assert kwargs["use_gradient_checkpointing"] == "unsloth"


def test_vllm_server_on_the_unsloth_backend_is_refused() -> None:
    cfg = load_config(REFERENCE, ["grpo.vllm_mode=server"])
    with pytest.raises(UserError, match=r"^grpo.vllm_mode: server needs backend hf .* --set backend=hf"):
        check_backend(cfg, cfg.grpo.optim)
    check_backend(load_config(TINY, ["grpo.use_vllm=true", "grpo.vllm_mode=server"]), "adamw_torch")  # hf: fine


def test_no_generation_kwargs_is_not_reported_as_a_change() -> None:
    # With vLLM the recipe passes generation_kwargs None; a trainer holding {} means the same.
    assert report_overrides(SimpleNamespace(generation_kwargs={}), {"generation_kwargs": None}) == []
    changed = report_overrides(SimpleNamespace(generation_kwargs={"top_k": 5}), {"generation_kwargs": None})
    assert changed == ["generation_kwargs None -> {'top_k': 5}"]
