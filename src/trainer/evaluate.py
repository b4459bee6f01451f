"""Evaluation: pass@1, format adherence, completion length and truncation on held-out problems,
for the base model and this run's SFT and GRPO adapters side by side.

    python -m trainer eval --config configs/qwen3-4b.yaml
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from trainer import distributed, models
from trainer.config import RunConfig
from trainer.data import eval_problems
from trainer.errors import UserError
from trainer.format import prompt_messages
from trainer.generation import Completion, generate
from trainer.report import markdown_table
from trainer.volume import find_adapter, stage_dir, write_run_record

log = logging.getLogger(__name__)


def score(completions: list[Completion], reference: str, eos: str | None) -> list[bool]:
    from trainer.rewards import answers_equivalent, extract_solution

    out = []
    for c in completions:
        guess = extract_solution(c.text)
        out.append(guess is not None and answers_equivalent(guess, reference))
    return out


def metrics(greedy: list[list[Completion]], sampled: list[list[Completion]] | None, answers: list[str], eos: str) -> dict:
    from trainer.rewards import follows_format

    flat = [c for group in greedy for c in group]
    correct = [score(group, a, eos)[0] for group, a in zip(greedy, answers)]
    result: dict[str, Any] = {
        "n": len(answers),
        "pass@1_greedy": sum(correct) / len(correct),
        "pass@1_sampled": None,
        "format_adherence": sum(follows_format(c.text, eos) for c in flat) / len(flat),
        "mean_completion_tokens": sum(c.num_tokens for c in flat) / len(flat),
        "truncation_rate": sum(c.truncated for c in flat) / len(flat),
    }
    if sampled:
        per_problem = [sum(score(group, a, eos)) / len(group) for group, a in zip(sampled, answers)]
        result["pass@1_sampled"] = sum(per_problem) / len(per_problem)
    return result


def main(cfg: RunConfig) -> dict[str, Any]:
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
    model, tokenizer = models.inference_model(cfg, adapters)
    results = []
    for ds_name, rows in problems.items():
        convs = [prompt_messages(r["question"]) for r in rows]
        answers = [r["answer"] for r in rows]
        for name in names:
            with models.use_adapter(model, None if name == "base" else name):
                common = dict(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size)
                greedy = generate(model, tokenizer, convs, desc=f"{ds_name}/{name} greedy", **common)
                sampled = None
                if e.num_samples > 0:
                    sampled = generate(
                        model, tokenizer, convs, temperature=e.temperature, top_k=e.top_k,
                        num_samples=e.num_samples, desc=f"{ds_name}/{name} sampled", **common,
                    )
            results.append({"dataset": ds_name, "model": name, **metrics(greedy, sampled, answers, tokenizer.eos_token)})
            log.info("%s", results[-1])
    report = {"results": results, "adapters": {k: str(v) for k, v in adapters.items()}}
    # Launched on several processes (make demo under accelerate), each evaluates alike; one writes.
    if not distributed.is_main_process():
        return report
    out = stage_dir(cfg, "eval")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(results)
    for path, text in ((out / "report.json", json.dumps(report, indent=2)), (out / "report.md", table)):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, path)
    write_run_record(cfg, "eval", report=str(out / "report.json"))
    print(table)
    print(f"\neval report: {out / 'report.json'} and {out / 'report.md'}")
    return report
