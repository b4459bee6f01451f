"""The unsloth backend on a GPU (make test-gpu): the tiny model through sft -> grpo -> eval -> infer ->
export, and what it writes loads back in plain transformers + PEFT. Skipped without CUDA or unsloth.

Each stage runs as `python -m trainer` in its own interpreter, as users run it: Unsloth must be
imported before transformers / TRL / PEFT, which this test process has long imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainer.cli import main
from trainer.training import report_overrides

ROOT = Path(__file__).resolve().parents[1]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _gpu_ready() -> bool:
    return importlib.util.find_spec("unsloth") is not None and _cuda()


needs_gpu = pytest.mark.skipif(not _gpu_ready(), reason="needs a CUDA GPU and unsloth (the GPU image)")


# A stuck stage fails the test instead of holding the GPU until someone notices.
STAGE_TIMEOUT_S = 900


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    """Where each stage writes its output as it runs: $TRAINER_GPU_TEST_LOGS (scripts/gpu-check.sh
    sets it) or the test's tmp dir, so a slow stage can be read while it runs, or after a kill."""
    path = Path(os.environ.get("TRAINER_GPU_TEST_LOGS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def stage(name: str, overrides: list[str], logs: Path, *extra: str) -> str:
    """Run one stage in a fresh interpreter; return its output (stdout + stderr)."""
    cmd = [sys.executable, "-m", "trainer", name, "--config", "configs/tiny.yaml"]
    cmd += [a for o in overrides for a in ("--set", o)] + list(extra)
    log = logs / f"{name}.log"
    with log.open("w") as f:
        try:
            res = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=STAGE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} ran past {STAGE_TIMEOUT_S} s ({log}):\n{log.read_text()[-4000:]}")
    out = log.read_text()
    assert res.returncode == 0, f"{name} exited {res.returncode} ({log}):\n{out[-4000:]}"
    return out


@pytest.fixture
def unsloth_overrides(tiny_overrides: list[str]) -> list[str]:
    optim = "adamw_8bit" if importlib.util.find_spec("bitsandbytes") else "adamw_torch"
    return [
        *tiny_overrides,
        "backend=unsloth",
        "model.dtype=bfloat16",
        f"sft.optim={optim}",
        f"grpo.optim={optim}",
        "sft.max_steps=20",  # enough for the adapter to move the logits measurably (merge check)
        "grpo.max_steps=10",
        "grpo.save_steps=5",
        "grpo.use_vllm=true",  # vLLM where it imports, Unsloth's generate otherwise: either is logged
    ]


@pytest.mark.gpu
@needs_gpu
def test_unsloth_pipeline_and_plain_reload(
    volume: Path, unsloth_overrides: list[str], tiny_model_dir: Path, logs: Path
) -> None:
    stage("sft", unsloth_overrides, logs)
    sft = volume / "tiny/sft/adapter"
    assert (sft / "adapter_model.safetensors").is_file()
    record = json.loads((volume / "tiny/sft/run.json").read_text())
    assert record["global_step"] == 20 and record["versions"]["unsloth"]

    grpo_out = stage("grpo", unsloth_overrides, logs)
    assert "UnslothGRPOTrainer" in grpo_out  # TRL's trainer, patched by Unsloth
    assert "GRPO rollouts: " in grpo_out  # the generation choice is logged
    record = json.loads((volume / "tiny/grpo/run.json").read_text())
    assert record["global_step"] == 10 and record["start_adapter"] == str(sft)
    assert (volume / "tiny/grpo/rewards.png").is_file()

    stage("eval", unsloth_overrides, logs)
    report = json.loads((volume / "tiny/eval/report-limit4.json").read_text())
    assert {(r["dataset"], r["model"]) for r in report["results"]} == {("heldout", m) for m in ("base", "sft", "grpo")}
    assert all(r["mean_completion_tokens"] > 0 for r in report["results"])

    out = stage("infer", unsloth_overrides, logs, "--prompt", "What is 12*7?")
    assert "<start_working_out>" in out and "\nanswer: " in out
    assert "generation: " in out  # vLLM or Unsloth's own generate, logged

    stage("export", unsloth_overrides, logs)
    export = volume / "tiny/export"
    assert (export / "adapter/adapter_config.json").is_file()
    assert (export / "merged/config.json").is_file()

    # Plain transformers + PEFT, in an interpreter that imports neither unsloth nor this project:
    # base + adapter and the merged model give the same logits, and differ from the base model's.
    code = f"""
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(export / "adapter")!r})
ids = tok("Compute 2 + 3.", return_tensors="pt").input_ids.cuda()
def logits(model):
    with torch.no_grad():
        return model.to("cuda", torch.float32)(ids).logits
base = logits(AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}))
peft = logits(PeftModel.from_pretrained(
    AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r}), {str(export / "adapter")!r}))
merged = logits(AutoModelForCausalLM.from_pretrained({str(export / "merged")!r}))
assert "unsloth" not in __import__("sys").modules
print("DIFF", (merged - peft).abs().max().item(), (base - peft).abs().max().item())
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr[-3000:]
    merged_err, adapter_effect = map(float, res.stdout.split("DIFF")[1].split())
    assert adapter_effect > 0  # the adapter changed the model
    assert merged_err < 0.1 * adapter_effect  # the merge is the adapter (bf16 rounding aside)

    assert "the trainer changed settings" not in grpo_out  # Unsloth kept every value the recipe set


@pytest.mark.gpu
@needs_gpu
def test_unsloth_grpo_defaults_that_the_recipe_pins(tmp_path: Path) -> None:
    """What Unsloth's patched GRPOConfig picks when a value is left unset (why grpo.py passes them all)."""
    code = f"""
import json, unsloth
from trl import GRPOConfig
keys = ("loss_type", "beta", "epsilon_high", "mask_truncated_completions", "vllm_importance_sampling_correction")
unset = GRPOConfig(output_dir={str(tmp_path)!r}, loss_type="dapo", report_to="none")
pinned = GRPOConfig(output_dir={str(tmp_path)!r}, loss_type="dapo", beta=0.0, epsilon_high=0.2,
                    mask_truncated_completions=False, vllm_importance_sampling_correction=False, report_to="none")
print("JSON" + json.dumps({{"patched": hasattr(unset, "unsloth_num_chunks"), "unset": {{k: getattr(unset, k) for k in keys}},
                           "pinned": {{k: getattr(pinned, k) for k in keys}}}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.split("JSON")[1])
    assert got["patched"]  # Unsloth's config (it keeps TRL's class name, for pickling)
    # An explicit dapo left alone gets the DAPO paper's settings, and TRL's IS correction is off.
    assert got["unset"]["epsilon_high"] == 0.28 and got["unset"]["mask_truncated_completions"] is True
    assert got["unset"]["vllm_importance_sampling_correction"] is False
    assert got["pinned"] == {
        "loss_type": "dapo",
        "beta": 0.0,
        "epsilon_high": 0.2,
        "mask_truncated_completions": False,
        "vllm_importance_sampling_correction": False,
    }


@pytest.mark.skipif(_gpu_ready(), reason="checks the message given where the unsloth backend cannot run")
def test_unsloth_backend_without_gpu_is_a_one_line_error(volume: Path, tiny_overrides, capsys) -> None:
    assert main(["sft", "--config", "configs/tiny.yaml", "--set", "backend=unsloth"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backend: unsloth needs") and "backend=hf" in err
    assert err.count("\n") == 1


def test_report_overrides_names_what_changed(caplog) -> None:
    from transformers.training_args import OptimizerNames

    requested = {"epsilon_high": 0.2, "optim": "adamw_torch", "report_to": "none", "top_k": 0, "beta": 0.0}
    args = SimpleNamespace(epsilon_high=0.28, optim=OptimizerNames.ADAMW_TORCH, report_to=[], top_k=-1, beta=0.0)
    assert report_overrides(args, requested) == ["epsilon_high 0.2 -> 0.28"]
    assert "the trainer changed settings the recipe set: epsilon_high 0.2 -> 0.28" in caplog.text
    args.epsilon_high = 0.2
    assert report_overrides(args, requested) == []
