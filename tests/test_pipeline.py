"""The whole pipeline on the tiny model, through the CLI: sft -> grpo -> eval -> infer -> export."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import main

pytestmark = pytest.mark.slow
SECRET = "hf_SECRET_never_written_anywhere"


def run(stage: str, overrides: list[str], *extra: str) -> int:
    return main([stage, "--config", "configs/tiny.yaml", *[a for o in overrides for a in ("--set", o)], *extra])


def test_sft_grpo_eval_infer_export(volume: Path, tiny_overrides: list[str], monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert run("sft", tiny_overrides) == 0
    sft = volume / "tiny/sft/adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in sft.iterdir()}
    record = json.loads((volume / "tiny/sft/run.json").read_text())
    assert record["global_step"] == 2 and record["config"]["sft"]["max_steps"] == 2
    assert record["versions"]["trl"] and record["versions"]["transformers"]

    assert run("grpo", tiny_overrides) == 0
    grpo = volume / "tiny/grpo"
    record = json.loads((grpo / "run.json").read_text())
    assert record["global_step"] == 2
    assert record["start_adapter"] == str(sft)  # GRPO found SFT's adapter on the volume
    assert (grpo / "adapter/adapter_model.safetensors").is_file()
    assert (grpo / "checkpoints/checkpoint-2/trainer_state.json").is_file()
    assert (grpo / "rewards.png").stat().st_size > 10_000
    assert list((grpo / "logs").glob("events.out.tfevents.*"))

    capsys.readouterr()
    assert run("eval", tiny_overrides) == 0
    report = json.loads((volume / "tiny/eval/report-limit4.json").read_text())
    assert {(r["dataset"], r["model"]) for r in report["results"]} == {("heldout", m) for m in ("base", "sft", "grpo")}
    assert all(r["n"] == 4 and 0 <= r["pass@1_greedy"] <= 1 for r in report["results"])
    assert "| heldout | grpo | 4 |" in capsys.readouterr().out

    assert run("infer", tiny_overrides, "--prompt", "What is 12*7?") == 0
    out = capsys.readouterr().out
    assert out.startswith("question: What is 12*7?\n\n<start_working_out>") and "\nanswer: " in out

    assert run("export", tiny_overrides) == 0
    assert (volume / "tiny/export/merged/config.json").is_file()
    assert (volume / "tiny/export/adapter/adapter_config.json").is_file()

    written = [p for p in volume.rglob("*") if p.is_file() and p.suffix in {".json", ".md", ".txt", ".jinja", ""}]
    assert written and not [p for p in written if SECRET in p.read_text(errors="ignore")]


def test_demo_prints_the_table_once_and_where_eval_wrote(volume: Path, tiny_overrides, capsys, caplog) -> None:
    """The table comes once, in the closing summary (the eval stage's own print is for `trainer eval`),
    and the summary names the report eval wrote: with eval.limit, report-limit4.md, not a full report."""
    with caplog.at_level(logging.INFO):
        assert run("demo", tiny_overrides) == 0
    out = capsys.readouterr().out
    assert out.count("| dataset |") == 1 and out.index("demo finished") < out.index("| dataset |")
    # Both stages count steps from 1: each line says which stage it is.
    lines = out.splitlines()
    for lead in ("sft step 1/2  loss ", "sft done: 2 steps in ", "grpo step 1/2  loss ", "grpo done: 2 steps in "):
        assert any(line.startswith(lead) for line in lines), lead
    assert not [line for line in lines if line.startswith(("step ", "done"))]
    assert "What these numbers mean" in out and "GRPO's loss stays near 0" in out
    evals = volume / "tiny/eval"
    assert f"  eval report:  {evals / 'report-limit4.md'}\n" in out and (evals / "report-limit4.md").is_file()
    assert not (evals / "report.md").exists() and "no full evaluation yet" in caplog.text


def test_grpo_adapter_loads_with_plain_transformers_and_peft(volume: Path, tiny_overrides, tiny_model_dir) -> None:
    assert run("sft", tiny_overrides) == 0
    assert run("grpo", tiny_overrides) == 0
    # A separate interpreter that imports nothing from this project.
    code = f"""
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(volume / "tiny/grpo/adapter")!r})
base = AutoModelForCausalLM.from_pretrained({str(tiny_model_dir)!r})
model = PeftModel.from_pretrained(base, {str(volume / "tiny/grpo/adapter")!r})
msgs = [{{"role": "user", "content": "What is 2 + 3?"}}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
assert out.shape[1] > ids["input_ids"].shape[1]
print("OK", tok.decode(out[0, ids["input_ids"].shape[1]:]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("OK")


def test_grpo_without_sft_adapter_is_a_clear_error(volume: Path, tiny_overrides, capsys) -> None:
    assert run("grpo", tiny_overrides) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: grpo starts from an SFT adapter and none was found") and "make sft" in err
    assert err.count("\n") == 1


def test_first_run_trains_as_every_later_run(volume: Path, tiny_overrides: list[str], tmp_path: Path) -> None:
    """The run that builds the tiny model on first use trains exactly as a rerun of the same command
    that finds it built: building it must not draw from the run's seeded random stream."""
    from safetensors.torch import load_file

    fresh = [o for o in tiny_overrides if not o.startswith("model.name=")] + [f"model.name={tmp_path / 'new-tiny'}"]
    adapters = []
    for name in ("first", "again"):
        assert run("sft", [*fresh, f"run_name={name}"]) == 0
        adapters.append(load_file(volume / name / "sft/adapter/adapter_model.safetensors"))
    first, again = adapters
    assert first.keys() == again.keys()
    assert all(first[k].equal(again[k]) for k in first)
