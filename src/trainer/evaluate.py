"""Evaluation: pass@1, format adherence, completion length and truncation on held-out problems,
for the base model and this run's SFT and GRPO adapters side by side.

    python -m trainer eval --config configs/qwen3-4b.yaml [--limit 100]

Answers are checked by `trainer.answers` (extract_solution, answers_equivalent, follows_format):
the same verifier the GRPO rewards use, so the metric and the training signal cannot drift apart.
Writes eval/report.json, eval/report.md and eval/samples.jsonl (every greedy completion, scored);
with eval.limit N, eval/report-limitN.json etc., leaving a full evaluation's files alone
(volume.eval_files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from trainer import backend, distributed, models
from trainer.config import EvalConfig, RunConfig
from trainer.data import eval_problems
from trainer.errors import UserError
from trainer.format import prompt_messages
from trainer.generation import Completion, generate
from trainer.report import markdown_report, stderr
from trainer.volume import eval_files, find_adapter, stage_dir, write_run_record

log = logging.getLogger(__name__)


def is_correct(text: str, reference: str) -> bool:
    """Whether a completion's solution block holds an answer equivalent to `reference`."""
    from trainer.answers import answers_equivalent, extract_solution

    guess = extract_solution(text)
    return guess is not None and answers_equivalent(guess, reference)


def _mean(values: list[float]) -> float:
    """The mean of per-problem scores."""
    return sum(values) / len(values)


def metrics(
    greedy: list[list[Completion]], sampled: list[list[Completion]] | None, answers: list[str], eos: str | None
) -> dict[str, Any]:
    """pass@1 (greedy, and the mean over `sampled` completions), with standard errors over problems;
    format adherence, mean completion tokens and truncation rate of the greedy completions. The
    per-problem scores are kept (`greedy_scores`, `sampled_scores`, in problem order) so that two
    models can be compared problem by problem (report.comparisons)."""
    from trainer.answers import follows_format

    if not answers:
        raise ValueError("no problems to score")
    flat = [c for group in greedy for c in group]
    correct = [float(is_correct(group[0].text, a)) for group, a in zip(greedy, answers, strict=True)]
    result: dict[str, Any] = {
        "n": len(answers),
        "pass@1_greedy": _mean(correct),
        "pass@1_greedy_stderr": stderr(correct),
        "pass@1_sampled": None,
        "pass@1_sampled_stderr": None,
        "format_adherence": _mean([float(follows_format(c.text, eos)) for c in flat]),
        "mean_completion_tokens": _mean([c.num_tokens for c in flat]),
        "truncation_rate": _mean([float(c.truncated) for c in flat]),
        "greedy_scores": correct,
    }
    if sampled:
        per_problem = [
            _mean([float(is_correct(c.text, a)) for c in group]) for group, a in zip(sampled, answers, strict=True)
        ]
        result["pass@1_sampled"] = _mean(per_problem)
        result["pass@1_sampled_stderr"] = stderr(per_problem)
        result["sampled_scores"] = per_problem
    return result


def sample_records(dataset: str, model: str, rows: list[dict[str, str]], greedy: list[list[Completion]]) -> list[dict]:
    """One scored record per problem (the greedy completion), for eval/samples.jsonl."""
    from trainer.answers import extract_solution, follows_format

    return [
        {
            "dataset": dataset,
            "model": model,
            "question": r["question"],
            "answer": r["answer"],
            "completion": g[0].text,
            "extracted": extract_solution(g[0].text),
            "correct": is_correct(g[0].text, r["answer"]),
            "follows_format": follows_format(g[0].text),
            "num_tokens": g[0].num_tokens,
            "truncated": g[0].truncated,
        }
        for r, g in zip(rows, greedy, strict=True)
    ]


def settings(e: EvalConfig, seed: int, rollout_min_p: float | None = None) -> dict[str, Any]:
    """What the report was measured with, the sampled pass@1's sampling and why it is not the rollouts'."""
    rollouts = f"min_p {rollout_min_p}" if rollout_min_p else "no min_p"
    return {
        "max_new_tokens": e.max_new_tokens,
        "num_samples": e.num_samples,
        "temperature": e.temperature,
        "top_k": e.top_k,
        "top_p": 1.0,
        "min_p": None,
        "seed": seed,
        "limit": e.limit,
        "sampling_note": (
            f"sampled pass@1 draws with temperature {e.temperature}, top_k {e.top_k}, top_p 1, no min_p "
            f"(eval.temperature / eval.top_k), not the GRPO rollouts' settings ({rollouts}): the usual "
            "pass@1 sampling, so the same for every model compared and for published scores; every "
            "other generation setting of the model (repetition penalty, typical_p, ...) is off"
        ),
    }


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(cfg: RunConfig) -> dict[str, Any]:
    from transformers import set_seed

    e = cfg.eval
    adapters: dict[str, Path] = {}
    for name in e.models:
        if name == "base":
            continue
        path = find_adapter(cfg, name)
        if path is None:
            log.warning("no %s adapter in %s; it is left out of the evaluation", name, stage_dir(cfg, name))
        else:
            adapters[name] = path
    names = [n for n in e.models if n == "base" or n in adapters]
    if not names:
        raise UserError("nothing to evaluate: no adapters found and eval.models excludes 'base'.")
    problems = {d.name: eval_problems(d, e.limit) for d in e.datasets}
    model, tokenizer = backend.inference_model(cfg, adapters)
    results, samples = [], []
    for ds_name, rows in problems.items():
        convs = [prompt_messages(r["question"]) for r in rows]
        answers = [r["answer"] for r in rows]
        for name in names:
            with models.use_adapter(model, None if name == "base" else name):
                common = dict(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, engine=e.engine)
                greedy = generate(model, tokenizer, convs, desc=f"{ds_name}/{name} greedy", **common)
                sampled = None
                if e.num_samples > 0:
                    set_seed(cfg.seed)  # every model draws from the same random stream
                    sampled = generate(
                        model,
                        tokenizer,
                        convs,
                        temperature=e.temperature,
                        top_k=e.top_k,
                        num_samples=e.num_samples,
                        desc=f"{ds_name}/{name} sampled",
                        **common,
                    )
            results.append(
                {"dataset": ds_name, "model": name, **metrics(greedy, sampled, answers, tokenizer.eos_token)}
            )
            samples += sample_records(ds_name, name, rows, greedy)
            r = results[-1]
            log.info(
                "%s / %s: pass@1 greedy %.1f%%, format %.1f%% (n = %d)",
                r["dataset"],
                r["model"],
                100 * r["pass@1_greedy"],
                100 * r["format_adherence"],
                r["n"],
            )
    report = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": settings(e, cfg.seed, cfg.grpo.min_p),
        "datasets": {
            d.name: {"path": d.path, "config": d.config, "split": d.split, "n": len(problems[d.name])}
            for d in e.datasets
        },
        "adapters": {k: str(v) for k, v in adapters.items()},
        "results": results,
    }
    # Launched on several processes (make demo under accelerate), each evaluates alike; one writes.
    if not distributed.is_main_process():
        return report
    files = eval_files(cfg)
    files.report_json.parent.mkdir(parents=True, exist_ok=True)
    _write(files.report_json, json.dumps(report, indent=2) + "\n")
    _write(files.report_md, markdown_report(report) + "\n")
    _write(files.samples, "".join(json.dumps(s) + "\n" for s in samples))
    write_run_record(cfg, "eval", files.record, report=str(files.report_json))
    if e.limit:
        full = eval_files(replace(cfg, eval=replace(e, limit=None))).report_md
        kept = (
            f"the full evaluation in {full} is left as it was"
            if full.is_file()
            else "no full evaluation yet (eval without --limit / eval.limit writes report.md)"
        )
        log.info("eval.limit %d (at most %d problems of each dataset): %s; %s", e.limit, e.limit, files.report_md, kept)
    return report
