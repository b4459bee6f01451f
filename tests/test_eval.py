"""Evaluation: metrics through the shared verifier, datasets (hub ids and local files), batched
generation, the report, the reward plot, and `trainer eval --limit` on the tiny model."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.cli import main
from trainer.config import EvalDatasetConfig, load_config
from trainer.data import eval_problems, eval_selection
from trainer.evaluate import is_correct, metrics
from trainer.generation import Completion
from trainer.report import comparisons, completion_rows, log_line, markdown_report, plot_rewards, reward_series, smooth

DONE = "{work}<end_working_out><SOLUTION>{answer}</SOLUTION>"


def done(answer: str, work: str = "2 + 2 = 4") -> str:
    return DONE.format(work=work, answer=answer)


@pytest.mark.parametrize(
    ("text", "reference", "expected"),
    [
        (done("4"), "4", True),
        (done("1,000"), "1000", True),  # thousands separator
        (done("\\frac{1}{2}"), "0.5", True),  # symbolic equivalence
        (done("\\boxed{12}"), "12", True),
        (done("5"), "4", False),
        (done("**73**"), "73", True),  # markdown emphasis
        (done("`73`"), "73", True),  # markdown code
        (done(" "), "0", False),  # an empty answer
        (done("$ $"), "0", False),  # only a wrapper
        ("<SOLUTION>4</SOLUTION>", "4", False),  # no working-out end tag: not the format's answer
        ("2 + 2 = 4", "4", False),  # no solution block at all
    ],
)
def test_is_correct_uses_the_reward_verifier(text: str, reference: str, expected: bool) -> None:
    assert is_correct(text, reference) is expected


def c(text: str, n: int = 5, truncated: bool = False) -> Completion:
    return Completion(text, n, truncated)


def test_metrics() -> None:
    greedy = [[c(done("4"), 4)], [c(done("7"), 6)], [c("rambling", 10, truncated=True)], [c(done("9"), 8)]]
    sampled = [
        [c(done("4")), c(done("4"))],
        [c(done("6")), c(done("1"))],
        [c("x"), c(done("3"))],
        [c(done("9")), c(done("0"))],
    ]
    m = metrics(greedy, sampled, ["4", "6", "3", "9"], eos="</s>")
    assert m["n"] == 4
    assert m["pass@1_greedy"] == 0.5  # problems 1 and 4
    assert m["pass@1_greedy_stderr"] == pytest.approx(math.sqrt(1 / 3 / 4))
    assert m["pass@1_sampled"] == pytest.approx((1 + 0.5 + 0.5 + 0.5) / 4)
    assert m["format_adherence"] == 0.75
    assert m["mean_completion_tokens"] == 7.0
    assert m["truncation_rate"] == 0.25
    assert metrics(greedy, None, ["4", "6", "3", "9"], eos=None)["pass@1_sampled"] is None


def test_report_compares_grpo_with_sft() -> None:
    row = dict(n=10, format_adherence=1.0, mean_completion_tokens=5.0, truncation_rate=0.0, **{"pass@1_sampled": None})
    results = [
        {"dataset": "d", "model": "sft", **row, "pass@1_greedy": 0.2, "pass@1_greedy_stderr": 0.13},
        {"dataset": "d", "model": "grpo", **row, "pass@1_greedy": 0.5, "pass@1_greedy_stderr": 0.16},
    ]
    settings = {"num_samples": 0, "temperature": 1.0, "top_k": 50, "seed": 1, "max_new_tokens": 9}
    text = markdown_report({"results": results, "settings": settings})
    assert "| d | grpo | 10 | 50.0% ± 16.0 | - | 100.0% | 5.0 | 0.0% |" in text
    assert "- d: GRPO vs SFT: pass@1 greedy +30.0 points, format +0.0 (n = 10)" in text
    assert "at most 9 new tokens" in text


@pytest.mark.parametrize(
    ("num_samples", "sentence"),
    [
        (0, "a greedy completion per problem, at most 9 new tokens"),
        (1, "one greedy and 1 sampled completion per problem (temperature 1.0, top_k 50, seed 1)"),
        (2, "one greedy and 2 sampled completions per problem (temperature 1.0, top_k 50, seed 1)"),
    ],
)
def test_report_says_how_many_completions_it_scored(num_samples: int, sentence: str) -> None:
    row = dict(n=1, format_adherence=1.0, mean_completion_tokens=5.0, truncation_rate=0.0, **{"pass@1_greedy": 1.0})
    results = [{"dataset": "d", "model": "sft", **row, "pass@1_sampled": 1.0 if num_samples else None}]
    settings = {"num_samples": num_samples, "temperature": 1.0, "top_k": 50, "seed": 1, "max_new_tokens": 9}
    assert sentence in markdown_report({"results": results, "settings": settings})


def test_report_gives_the_paired_error_of_a_change() -> None:
    """GRPO vs SFT on the same problems: the standard error of the per-problem differences, which is
    what tells a real change from noise (here 2 of 10 problems flip to right: +20 points)."""
    row = dict(n=10, format_adherence=1.0, mean_completion_tokens=5.0, truncation_rate=0.0, **{"pass@1_sampled": None})
    sft, grpo = [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    results = [
        {"dataset": "d", "model": "sft", **row, "pass@1_greedy": 0.2, "greedy_scores": sft},
        {"dataset": "d", "model": "grpo", **row, "pass@1_greedy": 0.4, "greedy_scores": grpo},
    ]
    # differences: two 1s, eight 0s; mean 0.2, sample sd sqrt(0.8 * 0.2 * 10 / 9), / sqrt(10)
    se = math.sqrt(sum((d - 0.2) ** 2 for d in [1, 1] + [0] * 8) / 9 / 10)
    assert comparisons(results) == [
        f"- d: GRPO vs SFT: pass@1 greedy +20.0 ± {100 * se:.1f} points, format +0.0 (n = 10)"
    ]
    m = metrics([[c(done("4"))]] * 2, [[c(done("4")), c("x")]] * 2, ["4", "5"], eos=None)
    assert m["greedy_scores"] == [1.0, 0.0] and m["sampled_scores"] == [0.5, 0.0]


# -------------------------------------------------------------------------------------------
# Datasets: the recipes' local copies and the hub ids of the defaults


# The local GSM8K / MATH-500 entries of the reference recipe (the tiny one evaluates its held-out sums only).
REFERENCE_EVAL = {d.name: d for d in load_config("configs/qwen3-4b.yaml").eval.datasets}


def test_local_eval_datasets_of_the_reference_recipe() -> None:
    gsm8k = eval_problems(REFERENCE_EVAL["gsm8k"], limit=3)
    assert len(gsm8k) == 3 and gsm8k[0]["answer"] == "18"  # the text after '####'
    math500 = eval_problems(REFERENCE_EVAL["math500"], limit=None)
    assert len(math500) == 500 and math500[0]["question"].startswith("Convert the point $(0,3)$")


HUB_FILES = {  # hub id -> the local copy of the same split, which has the hub's columns
    ("openai/gsm8k", "main", "test"): "data/eval/gsm8k_test.jsonl",
    ("HuggingFaceH4/MATH-500", None, "test"): "data/eval/math500_test.jsonl",
}


def test_default_eval_datasets_load_from_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults name hub datasets; no network here, so `datasets.load_dataset` serves the local
    copies of the same splits (same columns) and records what it was asked for."""
    import datasets

    asked = []

    def load_dataset(path: str, name: str | None = None, split: str | None = None) -> datasets.Dataset:
        asked.append((path, name, split))
        rows = [json.loads(line) for line in Path(HUB_FILES[path, name, split]).read_text().splitlines()]
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    cfg = load_config(None)  # no recipe: the defaults
    problems = {d.name: eval_problems(d, cfg.eval.limit) for d in cfg.eval.datasets}
    assert asked == list(HUB_FILES)
    assert len(problems["gsm8k"]) == 1319 and problems["gsm8k"][0]["answer"] == "18"
    assert len(problems["math500"]) == 500 and problems["math500"][0]["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_eval_limit_caps_every_dataset(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(10)))
    d = EvalDatasetConfig(name="p", path=str(path), limit=6)
    assert len(eval_problems(d, limit=None)) == 6
    assert [r["answer"] for r in eval_problems(d, limit=2)] == ["0", "1"]


# A 10-problem file: (the dataset's own limit, eval.limit) -> problems evaluated, and whether they are the
# full evaluation's (then eval writes report.*, not report-limitN.*).
SELECTIONS = [
    (None, None, 10, True),
    (None, 1000, 10, True),
    (None, 10, 10, True),
    (None, 9, 9, False),
    (6, None, 6, True),
    (6, 6, 6, True),
    (6, 3, 3, False),
    (6, 1000, 10, False),  # eval.limit overrides the dataset's limit: more than the full evaluation's 6
]


@pytest.mark.parametrize(("own", "limit", "n", "full"), SELECTIONS)
def test_eval_selection_says_whether_a_limit_leaves_out_a_problem(
    own: int | None, limit: int | None, n: int, full: bool, tmp_path: Path
) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question": f"q{i}", "answer": str(i)}) + "\n" for i in range(10)))
    rows, is_full = eval_selection(EvalDatasetConfig(name="p", path=str(path), limit=own), limit)
    assert ([r["answer"] for r in rows], is_full) == ([str(i) for i in range(n)], full)


# -------------------------------------------------------------------------------------------
# Generation and the eval stage on the tiny model


def test_generate_keeps_input_order(tiny_model_dir: Path) -> None:
    """Prompts are batched longest first; results must come back in the caller's order."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.format import apply_format, prompt_messages
    from trainer.generation import generate

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_format(tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    questions = ["What is 1 + 1?", "Compute 3 * 4 and then add 5 to the result, please.", "Calculate 9 - 2 now."]
    convs = [prompt_messages(q) for q in questions]
    forward = generate(model, tok, convs, max_new_tokens=6, batch_size=2)
    backward = generate(model, tok, convs[::-1], max_new_tokens=6, batch_size=2)
    assert [g[0].text for g in backward[::-1]] == [g[0].text for g in forward]
    sampled = generate(model, tok, convs, max_new_tokens=6, batch_size=2, temperature=1.0, num_samples=3)
    assert [len(g) for g in sampled] == [3, 3, 3]
    for group in forward + sampled:
        for comp in group:
            assert 1 <= comp.num_tokens <= 6 and (comp.num_tokens == 6 or not comp.truncated)


def test_fast_engine_generation_equals_generate(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval.engine 'fast' (the rollout engine; on CPU here by pretending the model is on a GPU): greedy
    completions identical to transformers' generate, in the caller's order, EOS and truncation alike;
    sampled ones come back num_samples per problem."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import generation
    from trainer.format import apply_format, prompt_messages

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_format(tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    convs = [prompt_messages(q) for q in ["What is 1 + 1?", "Compute 3 * 4 and then add 5.", "Calculate 9 - 2."]]
    want = generation.generate(model, tok, convs, max_new_tokens=24, batch_size=2)
    monkeypatch.setattr(generation, "_on_gpu", lambda model: True)
    assert generation._fast_engine(model, tok, "fast", False, 0.0, 0, generation.stop_token_ids(model, tok)) is not None
    got = generation.generate(model, tok, convs, max_new_tokens=24, batch_size=2, engine="fast")
    assert got == want
    sampled = generation.generate(model, tok, convs, max_new_tokens=8, temperature=1.0, num_samples=3, engine="fast")
    assert [len(g) for g in sampled] == [3, 3, 3] and all(1 <= c.num_tokens <= 8 for g in sampled for c in g)


def test_no_engine_choice_where_vllm_generates(tiny_model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model Unsloth loaded with fast_inference carries its vLLM engine, where its generate goes: the
    fast engine stays out and nothing claims "transformers' generate" (a GPU eval log said so, wrongly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer import generation

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    stops = generation.stop_token_ids(model, tok)
    generation._SAID.clear()
    with caplog.at_level(logging.INFO, logger="trainer.generation"):
        assert generation._fast_engine(model, tok, "fast", False, 0.0, 0, stops) is None
        assert "transformers' generate: the model is not on a GPU" in caplog.text  # the plain CPU model
        caplog.clear()
        generation._SAID.clear()
        model.vllm_engine = object()
        assert generation._fast_engine(model, tok, "fast", False, 0.0, 0, stops) is None
    assert "generate" not in caplog.text


def test_eval_stage_with_limit_flag(
    volume: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A quick check (--limit) writes report-limitN.* beside a full evaluation and leaves it alone."""
    full = {name: f"a full evaluation's {name}\n" for name in ("report.json", "report.md", "samples.jsonl", "run.json")}
    evals = volume / "tiny/eval"
    evals.mkdir(parents=True)
    for name, text in full.items():
        (evals / name).write_text(text)
    args = ["eval", "--config", "configs/tiny.yaml", "--limit", "3"]
    args += ["--set", f"model.name={tiny_model_dir}", "--set", "eval.max_new_tokens=8", "--set", "eval.num_samples=2"]
    datasets = ", ".join(
        ["{name: heldout, path: src/trainer/sample_data/heldout.jsonl}"]
        + [
            f"{{name: {d.name}, path: {d.path}, answer_format: {d.answer_format}, columns: {d.columns}}}"
            for d in REFERENCE_EVAL.values()
        ]
    )
    args += ["--set", f"eval.datasets=[{datasets}]"]
    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    out = capsys.readouterr().out
    assert {name: (evals / name).read_text() for name in full} == full
    assert f"eval.limit 3 (at most 3 problems of each dataset): {evals / 'report-limit3.md'}; " in caplog.text
    assert f"the full evaluation in {evals / 'report.md'} is left as it was" in caplog.text
    report = json.loads((evals / "report-limit3.json").read_text())
    # No adapters on this volume: the base model alone, on every dataset of the recipe.
    assert [(r["dataset"], r["model"], r["n"]) for r in report["results"]] == [
        ("heldout", "base", 3),
        ("gsm8k", "base", 3),
        ("math500", "base", 3),
    ]
    assert report["settings"]["num_samples"] == 2 and report["datasets"]["gsm8k"]["n"] == 3
    assert (report["settings"]["top_k"], report["settings"]["top_p"], report["settings"]["min_p"]) == (50, 1.0, None)
    note = "sampled pass@1 draws with temperature 1.0, top_k 50, top_p 1, no min_p"
    assert (
        note in report["settings"]["sampling_note"]
        and "rollouts' settings (min_p 0.1)" in report["settings"]["sampling_note"]
    )
    text = (evals / "report-limit3.md").read_text()
    assert text.startswith("| dataset |") and note[1:] in text
    assert "A quick check (eval.limit): at most the first 3 problems of each dataset." in text
    assert out.count("| dataset |") == 1 and "| heldout | base | 3 |" in out
    assert f"eval report: {evals / 'report-limit3.json'} and {evals / 'report-limit3.md'}; " in out
    assert json.loads((evals / "run-limit3.json").read_text())["report"] == str(evals / "report-limit3.json")
    samples = [json.loads(line) for line in (evals / "samples-limit3.jsonl").read_text().splitlines()]
    assert len(samples) == 9 and {"question", "answer", "completion", "extracted", "correct"} <= set(samples[0])
    # The random base model never emits EOS within 8 tokens.
    assert all(r["truncation_rate"] == 1.0 and r["mean_completion_tokens"] == 8 for r in report["results"])


# -------------------------------------------------------------------------------------------
# Blocks: what a rerun of eval reuses


HELDOUT = "{name: heldout, path: src/trainer/sample_data/heldout.jsonl, limit: 6}"
SUM = "eval: {} of {} blocks reused from an earlier run ({}), {} to compute"


@pytest.fixture
def eval_volume(volume: Path, sft_volume: Path) -> Path:
    """A volume of its own holding the module's one-step SFT run (the tests here retrain it)."""
    shutil.copytree(sft_volume, volume)
    return volume


def run_eval(tiny_model_dir: Path, *sets: str, limit: int | None = None) -> int:
    args = ["eval", "--config", "configs/tiny.yaml", *(["--limit", str(limit)] if limit else [])]
    overrides = [f"model.name={tiny_model_dir}", f"eval.datasets=[{HELDOUT}]", "eval.max_new_tokens=8", *sets]
    return main(args + [a for o in overrides for a in ("--set", o)])


def computed(volume: Path, tag: str = "") -> list[str]:
    """The blocks the last eval generated (its run record), not those it reused."""
    return json.loads((volume / f"tiny/eval/run{tag}.json").read_text())["computed_blocks"]


def outputs(volume: Path) -> dict[str, object]:
    """What eval writes for people, less the report's time stamp."""
    evals = volume / "tiny/eval"
    report = json.loads((evals / "report.json").read_text())
    del report["time"]
    return {"report": report, "md": (evals / "report.md").read_text(), "samples": (evals / "samples.jsonl").read_text()}


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's inode and mtime: a file written again (atomically: a new inode) shows here."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


GREEDY_SAMPLED = ["{}-heldout-greedy.json", "{}-heldout-sampled.json"]


def blocks_of(*models: str) -> list[str]:
    return [name.format(m) for m in models for name in GREEDY_SAMPLED]


def test_a_rerun_reuses_every_block_and_a_subset_run_leaves_the_rest_to_compute(
    eval_volume: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    blocks = eval_volume / "tiny/eval/blocks"
    with caplog.at_level(logging.INFO):
        assert run_eval(tiny_model_dir, "eval.models=[sft]") == 0
        assert SUM.format(0, 2, blocks, 2) in caplog.text
        assert computed(eval_volume) == blocks_of("sft")
        caplog.clear()
        assert run_eval(tiny_model_dir) == 0  # base and sft: only base is missing
        assert SUM.format(2, 4, blocks, 2) in caplog.text
        assert computed(eval_volume) == blocks_of("base")
        assert "heldout/base greedy" in capsys.readouterr().err  # the progress bar of a block generated
        first, before = outputs(eval_volume), stamps(blocks)
        assert [(r["model"], r["n"]) for r in first["report"]["results"]] == [("base", 6), ("sft", 6)]
        caplog.clear()
        assert run_eval(tiny_model_dir) == 0
    assert SUM.format(4, 4, blocks, 0) in caplog.text and "heldout/" not in capsys.readouterr().err
    assert computed(eval_volume) == [] and stamps(blocks) == before  # nothing generated, nothing rewritten
    assert outputs(eval_volume) == first


def test_a_changed_adapter_corrupt_block_or_reuse_false_computes_again(
    eval_volume: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocks = eval_volume / "tiny/eval/blocks"
    assert run_eval(tiny_model_dir) == 0
    first = outputs(eval_volume)
    # SFT trained one more step: a new adapter, so SFT's blocks are generated again and base's are not.
    sft = ["sft", "--config", "configs/tiny.yaml", "--set", f"model.name={tiny_model_dir}", "--set", "report_to=[]"]
    assert main([*sft, "--set", "sft.max_steps=2"]) == 0
    with caplog.at_level(logging.INFO):
        assert run_eval(tiny_model_dir) == 0
    assert "eval: sft-heldout-greedy.json was made with another adapter; computing it again" in caplog.text
    assert computed(eval_volume) == blocks_of("sft")
    retrained = outputs(eval_volume)
    # A block cut short (or otherwise unreadable) is generated again, to the same completions.
    greedy = blocks / "base-heldout-greedy.json"
    greedy.write_text(greedy.read_text()[:100])
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run_eval(tiny_model_dir) == 0
    assert "eval: base-heldout-greedy.json is unreadable (JSONDecodeError: " in caplog.text
    assert computed(eval_volume) == ["base-heldout-greedy.json"] and outputs(eval_volume) == retrained
    assert [r for r in retrained["report"]["results"] if r["model"] == "base"] == [
        r for r in first["report"]["results"] if r["model"] == "base"
    ]
    assert run_eval(tiny_model_dir, "eval.reuse=false") == 0
    assert computed(eval_volume) == blocks_of("base", "sft") and outputs(eval_volume) == retrained


def test_new_weights_in_the_same_model_folder_are_evaluated_again(
    volume: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A local model folder whose weights are replaced under the same name (a re-fetch, a user's copy):
    its blocks are generated again, not reused with the old weights' completions."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    assert run_eval(model, "eval.models=[base]") == 0
    old = outputs(volume)["samples"]
    weights = model / "model.safetensors"
    noise = torch.Generator().manual_seed(0)
    tensors = {k: v + 0.5 * torch.randn(v.shape, generator=noise) for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.INFO):
        assert run_eval(model, "eval.models=[base]") == 0
    assert "eval: base-heldout-greedy.json was made with another weights; computing it again" in caplog.text
    assert computed(volume) == blocks_of("base") and outputs(volume)["samples"] != old


# Given a tmp folder holding m/ (weights, config, tokenizer) and x.gguf: model.name, model.gguf_file,
# and the files that stand for the base model's weights in an eval block's key (None: a hub id's key).
IN_M = ["a.safetensors", "b.safetensors", "c.bin", "d.gguf"]
WEIGHTS_CASES = {
    "a hub id": lambda t: ("unsloth/Qwen3-4B-Base", None, None),
    "a folder": lambda t: (f"{t}/m", None, IN_M),
    "a gguf file in it": lambda t: (f"{t}/m", "d.gguf", IN_M),
    "a gguf file of its own": lambda t: ("unsloth/Qwen3-4B-Base", f"{t}/x.gguf", [f"{t}/x.gguf"]),
}


@pytest.mark.parametrize("case", WEIGHTS_CASES)
def test_the_weights_in_an_eval_key(case: str, tmp_path: Path) -> None:
    from trainer.evaluate import local_weights, model_identity

    name, gguf, expected = WEIGHTS_CASES[case](tmp_path)
    (tmp_path / "m").mkdir()
    for f in [*IN_M, "config.json", "tokenizer.json", "../x.gguf"]:
        (tmp_path / "m" / f).write_text(f)
    sets = [f"model.name={name}", "model.init=pretrained"] + ([f"model.gguf_file={gguf}"] if gguf else [])
    cfg = load_config("configs/tiny.yaml", sets)
    weights = local_weights(cfg)
    assert (None if weights is None else sorted(weights)) == expected
    for f, identity in (weights or {}).items():
        stat = (Path(f) if Path(f).is_absolute() else tmp_path / "m" / f).stat()
        assert identity == [stat.st_size, stat.st_mtime_ns]
    # A hub id's key is what it was before weights were keyed: model.revision (in the model section) pins it.
    assert ("weights" in model_identity(cfg, None, weights)) is (weights is not None)


def test_a_limited_run_keeps_its_blocks_apart(eval_volume: Path, tiny_model_dir: Path) -> None:
    evals = eval_volume / "tiny/eval"
    assert run_eval(tiny_model_dir) == 0
    full = {p.relative_to(evals): (p.read_bytes(), p.stat().st_mtime_ns) for p in evals.rglob("*") if p.is_file()}
    assert run_eval(tiny_model_dir, limit=3) == 0
    assert computed(eval_volume, "-limit3") == blocks_of("base", "sft")
    assert run_eval(tiny_model_dir, limit=3) == 0
    assert computed(eval_volume, "-limit3") == []
    assert sorted(p.name for p in (evals / "blocks-limit3").iterdir()) == sorted(blocks_of("base", "sft"))
    assert {p: (evals / p).read_bytes() for p in full} == {p: b for p, (b, _) in full.items()}
    assert {p: (evals / p).stat().st_mtime_ns for p in full} == {p: t for p, (_, t) in full.items()}


def test_a_limit_that_leaves_out_no_problem_is_the_full_evaluation(
    volume: Path, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    evals = volume / "tiny/eval"
    sets = [
        f"model.name={tiny_model_dir}",
        "eval.datasets=[{name: heldout, path: src/trainer/sample_data/heldout.jsonl}]",
    ]
    sets += ["eval.models=[base]", "eval.max_new_tokens=4", "eval.num_samples=0"]
    args = ["eval", "--config", "configs/tiny.yaml", *[a for o in sets for a in ("--set", o)]]
    with caplog.at_level(logging.INFO):
        assert main([*args, "--limit", "1000"]) == 0
    assert "eval.limit 1000 leaves out no problem (heldout 64): this is the full evaluation" in caplog.text
    assert sorted(p.name for p in evals.iterdir()) == [
        "blocks",
        "report.json",
        "report.md",
        "run.json",
        "samples.jsonl",
    ]
    report = json.loads((evals / "report.json").read_text())
    assert report["settings"]["limit"] is None and report["datasets"]["heldout"]["n"] == 64
    assert "quick check" not in (evals / "report.md").read_text()
    assert f"eval report: {evals / 'report.json'} and {evals / 'report.md'}; " in capsys.readouterr().out
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(args) == 0  # the same evaluation without --limit: nothing left to compute
    assert SUM.format(1, 1, evals / "blocks", 0) in caplog.text


@pytest.mark.slow
def test_sigterm_keeps_the_finished_blocks_and_exits_143(
    volume: Path, tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`trainer eval` in its own process, stopped by SIGTERM once its first block is saved: it finishes
    the block it is in, exits 143, and the same command computes only the rest, to the same report."""
    blocks = volume / "tiny/eval/blocks"
    # Four blocks; the signal comes once the first is saved, well before the fourth can end.
    heldout = "path: src/trainer/sample_data/heldout.jsonl"
    sets = [f"model.name={tiny_model_dir}", f"eval.datasets=[{{name: a, {heldout}}}, {{name: b, {heldout}}}]"]
    sets += ["eval.max_new_tokens=16", "eval.num_samples=2"]
    args = ["eval", "--config", "configs/tiny.yaml", *[a for o in sets for a in ("--set", o)]]
    env = {**os.environ, "PYTHONPATH": str(Path.cwd() / "src"), "CHECKPOINT_DIR": str(volume)}
    log = tmp_path / "eval.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainer", *args], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while not (blocks / "base-a-greedy.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]
    stopped = re.search(
        rf"error: eval stopped by SIGTERM after (\d) of 4 blocks, saved in {re.escape(str(blocks))}\. ", log.read_text()
    )
    assert stopped, log.read_text()[-3000:]
    done = int(stopped[1])
    assert 1 <= done < 4 and len(list(blocks.iterdir())) == done and not (volume / "tiny/eval/report.json").exists()

    with caplog.at_level(logging.INFO):
        assert main(args) == 0
    assert SUM.format(done, 4, blocks, 4 - done) in caplog.text
    resumed = outputs(volume)
    assert main([*args, "--set", "eval.reuse=false"]) == 0
    assert outputs(volume) == resumed


@pytest.mark.parametrize("bad", ["0", "-1", "ten"])
def test_limit_flag_must_be_positive(bad: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["eval", "--limit", bad])
    assert e.value.code == 2 and "--limit" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------
# The reward plot and the rollout rows


def history(steps: int) -> list[dict]:
    out = []
    for s in range(1, steps + 1):
        out.append(
            {
                "step": s,
                "reward": s / 2,
                "rewards/fmt/mean": 1.0,
                "rewards/answer/mean": s / 2 - 1,
                "rewards/answer/std": 0.3,
                "accuracy": s / steps,
                "completions/mean_length": 20 - s / 4,
                "completions/clipped_ratio": 0.1,
                "kl": 0.01 * s,
                "learning_rate": 1e-4,
            }
        )
    return [*out, {"step": steps, "train_runtime": 3.0}]


def test_reward_series_and_plot(tmp_path: Path) -> None:
    series = reward_series(history(12))
    assert set(series) == {"total", "fmt", "answer"}
    assert series["answer"][:2] == [(1, -0.5), (2, 0.0)]
    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]
    png = plot_rewards(history(12), tmp_path / "grpo" / "rewards.png")
    assert png is not None and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert plot_rewards([{"step": 1, "loss": 0.1}], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize(
    ("stage", "logs", "line"),
    [
        (  # SFT: what transformers logs, less the epoch and token counts
            "sft",
            {
                "loss": 7.417,
                "grad_norm": 1.014,
                "learning_rate": 0.004826,
                "mean_token_accuracy": 0.0557,
                "epoch": 0.33,
            },
            "sft step 10/120  loss 7.417  token accuracy 0.056  grad norm 1.01  lr 4.83e-03",
        ),
        (  # GRPO: the total reward with each reward's mean after it
            "grpo",
            {
                "loss": 0.0,
                "reward": 0.5,
                "rewards/format/mean": 3.0,
                "rewards/format/std": 0.0,
                "rewards/check_answer/mean": -2.5,
                "accuracy": 0.125,
                "completions/mean_length": 19.25,
                "completions/clipped_ratio": 0.0,
                "num_tokens": 506.0,
                "sampling/sampling_logp_difference/mean": 0.00731,
                "step_time": 0.2184,
            },
            "grpo step 10/120  loss 0  reward 0.5 (format 3, check_answer -2.5)  accuracy 0.12  length 19.2"
            "  truncated 0.00  logp gap 0.0073  step 0.22 s",
        ),
        ("", {"loss": 0.5}, "step 10/120  loss 0.5"),  # no stage given: no lead word
    ],
)
def test_log_line(stage: str, logs: dict, line: str) -> None:
    assert log_line(logs, 10, 120, stage=stage) == line


# (step, max_steps, step this run began at, the end-of-training line): what this run did, not the total.
SUMMARIES = [
    (120, 120, 0, "done: 120 steps in 24.1 s"),
    (120, 120, 64, "done: 56 steps this run (65-120) in 24.1 s"),
    (181, 300, 0, "stopped at step 181/300: 181 steps in 24.1 s"),
    (181, 300, 120, "stopped at step 181/300: 61 steps this run (121-181) in 24.1 s"),
]


@pytest.mark.parametrize(("step", "max_steps", "first_step", "line"), SUMMARIES)
def test_the_summary_line_says_what_this_run_did(step: int, max_steps: int, first_step: int, line: str) -> None:
    assert log_line({"train_runtime": 24.08, "train_loss": 1.39}, step, max_steps, first_step, "sft") == f"sft {line}"


def test_completion_rows() -> None:
    logs = {
        "prompt": ["p1", "p1"],
        "completion": ["a", "b"],
        "rewards": {"fmt": [3.0, 0.0], "answer": [5.0, float("nan")]},
        "advantages": [0.7, -0.7],
    }
    rows = completion_rows(logs, step=4, reward_weights=[1.0, 2.0])
    assert rows[0] == {
        "step": 4,
        "prompt": "p1",
        "completion": "a",
        "rewards": {"fmt": 3.0, "answer": 5.0},
        "reward": 13.0,
        "advantage": 0.7,
    }
    assert rows[1]["rewards"]["answer"] is None and rows[1]["reward"] == 0.0


def test_missing_tracker_is_a_clear_error(volume: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    assert main(["sft", "--set", f"model.name={tiny_model_dir}", "--set", "report_to=[wandb]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: report_to: wandb needs the wandb package") and err.count("\n") == 1
    assert not list(volume.rglob("adapter*")) and not list(volume.rglob("events.out.*"))  # nothing trained


# Fields a hub model's generation_config may set; "drawn" stands for the tokens that greedy decoding
# draws without them, so that each field would change the completions where it applied.
FOREIGN_GENERATION_FIELDS = [
    {
        "repetition_penalty": 50.0,
        "no_repeat_ngram_size": 1,
        "typical_p": 0.2,
        "min_p": 0.9,
        "min_new_tokens": 6,
        "suppress_tokens": "drawn",
    },
    {"bad_words_ids": "drawn"},
    {"sequence_bias": "drawn"},
    {"exponential_decay_length_penalty": (1, 50.0)},
    {"num_beams": 2, "num_return_sequences": 2},
    {"return_dict_in_generate": True, "output_scores": True},
    {"stop_strings": ["a"]},
]


@pytest.mark.parametrize("fields", FOREIGN_GENERATION_FIELDS, ids=lambda f: ",".join(f))
def test_generation_ignores_the_models_own_sampling_fields(tiny_model_dir: Path, fields: dict, caplog) -> None:
    """transformers fills unset generation fields from the model's generation_config; ours leaves
    them out (logged) and puts the model's own back after."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.format import apply_format, prompt_messages
    from trainer.generation import generate

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    apply_format(tok)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    convs = [prompt_messages("What is 12*7?"), prompt_messages("What is 3+4?")]

    def texts(temperature: float) -> list[str]:
        torch.manual_seed(0)
        out = generate(model, tok, convs, max_new_tokens=6, temperature=temperature, top_k=0, num_samples=1)
        return [c.text for group in out for c in group]

    clean = {t: texts(t) for t in (0.0, 1.0)}
    drawn = sorted({i for t in clean[0.0] for i in tok(t, add_special_tokens=False)["input_ids"]})
    as_set = {
        "suppress_tokens": drawn,
        "bad_words_ids": [[i] for i in drawn],
        "sequence_bias": {(i,): -100.0 for i in drawn},
    }
    for name, value in fields.items():
        setattr(model.generation_config, name, as_set[name] if value == "drawn" else value)
    own = model.generation_config.to_dict()
    with caplog.at_level(logging.INFO, logger="trainer.generation"):
        assert {t: texts(t) for t in (0.0, 1.0)} == clean
    assert model.generation_config.to_dict() == own  # what export saves
    assert "not applied: generation uses the recipe's settings only" in caplog.text
    assert all(f"{name}=" in caplog.text for name in fields)
