"""Evaluation: pass@1, format adherence, completion length and truncation on held-out problems,
for the base model and this run's SFT and GRPO adapters side by side.

    python -m trainer eval --config configs/qwen3-4b.yaml [--limit 100]

Answers are checked by `trainer.answers` (extract_solution, answers_equivalent, follows_format):
the same verifier the GRPO rewards use, so the metric and the training signal cannot drift apart.
Writes eval/report.json, eval/report.md and eval/samples.jsonl (every greedy completion, scored);
with eval.limit N, eval/report-limitN.json etc., leaving a full evaluation's files alone
(volume.eval_files), unless N leaves out no problem: then it is the full evaluation. Each block of
work (one model on one dataset, greedy or sampled) is saved in eval/blocks/ as soon as it is
generated, and a rerun reuses every block whose inputs are unchanged (compute_blocks): a SIGTERM
costs at most the block it interrupted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from trainer import backend, distributed, models
from trainer.config import EvalConfig, RunConfig, to_dict
from trainer.data import eval_selection
from trainer.errors import Interrupted, UserError
from trainer.format import CHAT_TEMPLATE, prompt_messages
from trainer.generation import Completion, generate
from trainer.report import markdown_report, stderr
from trainer.volume import (
    ADAPTER_FILES,
    EvalFiles,
    eval_files,
    find_adapter,
    package_versions,
    sha256_file,
    stage_dir,
    write_run_record,
    write_text,
)

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


# ---------------------------------------------------------------------------------------------
# Blocks: the completions of one model on one dataset, greedy or sampled, each saved as soon as it is
# generated (eval/blocks/), keyed by everything they depend on, so that a rerun (after a SIGTERM, or
# with another eval.models) generates only what is missing. Scoring happens when the report is
# assembled: a block depends on generation's inputs alone.

Block = tuple[list[list[Completion]], str | None]  # completions per problem, the tokenizer's EOS (follows_format)


# The libraries whose upgrade may change a completion; the verifier (math-verify) only scores them,
# and scoring is redone at every report.
_GENERATING_PACKAGES = ("torch", "transformers", "peft", "unsloth")


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# The files of a local model folder that hold its weights (local_weights).
WEIGHT_FILES = ("*.safetensors", "*.bin", "*.gguf")


def local_weights(cfg: RunConfig) -> dict[str, list[int]] | None:
    """The base model's weights as {file: [size in bytes, mtime in ns]} where they are local files:
    each WEIGHT_FILES match in the folder model.name (building the tiny model there first under
    model.init tiny: the key is of the weights that will load), and model.gguf_file wherever it lies.
    None for a hub id: the recipe's model.revision is what pins it, in the model section already.

    Size and mtime, not a hash: hashing multi-GB weights at every eval would take minutes, and
    replacing or rewriting a file (a re-fetch, a user's copy) gives it a new mtime. A copied volume
    with new mtimes costs one recompute, never a stale number; only a copy that keeps the mtime of
    other weights of the same size (cp -p, rsync -a) goes unnoticed."""
    name = models.resolve_model_path(cfg.model, cfg.seed)
    folder = Path(name)
    files = {p.name: p for pattern in WEIGHT_FILES for p in folder.glob(pattern)} if folder.is_dir() else {}
    if cfg.model.gguf_file is not None:
        from trainer.gguf_model import gguf_path

        files[cfg.model.gguf_file] = gguf_path(name, cfg.model.gguf_file)
    elif not folder.is_dir():
        return None
    stats = {f: p.stat() for f, p in sorted(files.items()) if p.is_file()}  # a missing one: the loader names it
    return {f: [st.st_size, st.st_mtime_ns] for f, st in stats.items()}


def model_identity(cfg: RunConfig, adapter: Path | None, weights: dict[str, list[int]] | None = None) -> dict[str, Any]:
    """What one model's completions depend on besides prompts and decoding: the recipe's model section
    and backend, the base model's weights where they are local files (`weights`, from local_weights;
    left out of the key for a hub id), the device and resolved dtype ('auto' is bfloat16 on a GPU,
    float32 on a CPU), the versions of the libraries that generate, and the adapter's files (sha256;
    None for the base model). The adapter's contents are hashed rather than its size and mtime: a
    copied or restored volume (new mtimes) still matches, a retrained adapter of the same size never
    does, and one read of a LoRA adapter costs little next to generating with it."""
    import torch

    return {
        **({} if weights is None else {"weights": weights}),
        "model": {"backend": cfg.backend, **to_dict(cfg.model)},
        "runtime": {
            "device": f"cuda {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu",
            "dtype": str(models.torch_dtype(cfg.model)),
            "versions": {k: v for k, v in package_versions().items() if k in _GENERATING_PACKAGES},
        },
        "adapter": None if adapter is None else {f: sha256_file(adapter / f) for f in ADAPTER_FILES},
    }


def decoding(cfg: RunConfig, mode: str) -> dict[str, Any]:
    """The generation settings of a greedy or sampled block. The batch size counts: prompts are
    batched longest first, so it decides which prompts share a batch (padding, and in bfloat16 the
    kernels' rounding) and, when sampling, which random numbers each prompt draws."""
    e = cfg.eval
    out: dict[str, Any] = {"max_new_tokens": e.max_new_tokens, "batch_size": e.batch_size, "engine": e.engine}
    if mode == "sampled":
        out.update(temperature=e.temperature, top_k=e.top_k, num_samples=e.num_samples, seed=cfg.seed)
    return out


def block_path(folder: Path, dataset: str, model: str, mode: str) -> Path:
    """eval/blocks/<model>-<dataset>-<mode>.json; a dataset name is any text, so only its safe characters."""
    safe = re.sub(r"[^\w.-]", "_", dataset)
    return folder / f"{model}-{safe}-{mode}.json"


def read_block(path: Path, key: dict[str, Any], n: int) -> Block | None:
    """The block saved at `path` if it was made with `key` and holds `n` problems, else None: none
    there, made with other inputs (logged, naming which), or unreadable (cut short, corrupt: a warning)."""
    try:
        data = json.loads(path.read_text())
        if data["key"] != key:
            differ = sorted(k for k in key.keys() | data["key"].keys() if key.get(k) != data["key"].get(k))
            log.info("eval: %s was made with another %s; computing it again", path.name, ", ".join(differ))
            return None
        completions = [[Completion(**c) for c in group] for group in data["completions"]]
        if len(completions) != n or not all(completions):
            raise ValueError(f"completions for {len(completions)} problems, expected {n}")
        return completions, data["eos_token"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("eval: %s is unreadable (%s: %s); computing it again", path.name, type(err).__name__, err)
        return None


def _generate_block(
    cfg: RunConfig, model: Any, tokenizer: Any, name: str, convs: list[list[dict[str, str]]], mode: str, desc: str
) -> list[list[Completion]]:
    from transformers import set_seed

    e = cfg.eval
    common = dict(max_new_tokens=e.max_new_tokens, batch_size=e.batch_size, engine=e.engine, desc=desc)
    with models.use_adapter(model, None if name == "base" else name):
        if mode == "greedy":
            return generate(model, tokenizer, convs, **common)
        set_seed(cfg.seed)  # every model draws from the same random stream, whichever blocks ran before
        return generate(
            model, tokenizer, convs, temperature=e.temperature, top_k=e.top_k, num_samples=e.num_samples, **common
        )


def compute_blocks(
    cfg: RunConfig, adapters: dict[str, Path], names: list[str], problems: dict[str, list[dict[str, str]]]
) -> tuple[dict[tuple[str, str, str], Block], list[str]]:
    """Every (dataset, model, mode) block of this evaluation: reused from eval/blocks/ where its key
    matches (eval.reuse), else generated and saved there at once. The model loads only if a block is
    missing. Returns the blocks and the file names of those generated.

    Raises Interrupted (exit 128 + signal) on SIGTERM / SIGINT once the current block is saved, unless
    it was the last one."""
    e = cfg.eval
    files = eval_files(cfg)
    modes = ["greedy", "sampled"] if e.num_samples > 0 else ["greedy"]
    weights = local_weights(cfg)
    identity = {name: model_identity(cfg, adapters.get(name), weights) for name in names}
    convs = {ds: [prompt_messages(r["question"]) for r in rows] for ds, rows in problems.items()}
    prompts = {ds: _digest([CHAT_TEMPLATE, c]) for ds, c in convs.items()}  # questions, system prompt, template
    keys = {
        (ds, name, mode): {**identity[name], "prompts": prompts[ds], "decoding": decoding(cfg, mode)}
        for ds in problems
        for name in names
        for mode in modes
    }

    def saved() -> dict[tuple[str, str, str], Block]:
        found = {b: read_block(block_path(files.blocks, *b), key, len(problems[b[0]])) for b, key in keys.items()}
        return {b: block for b, block in found.items() if block is not None}

    # Decided once, by the main process, so that every process generates the same blocks.
    blocks = distributed.from_main_process(saved) if e.reuse else {}
    todo = [b for b in keys if b not in blocks]
    log.info(
        "eval: %d of %d blocks reused from an earlier run (%s), %d to compute%s",
        len(blocks),
        len(keys),
        files.blocks,
        len(todo),
        "" if e.reuse else " (eval.reuse false)",
    )
    if not todo:
        return blocks, []
    from trainer.resilience.stopping import StopOnSignal  # imports transformers: not at import time

    model, tokenizer = backend.inference_model(cfg, adapters)
    stop = StopOnSignal("finishing this block of the evaluation (finished blocks are kept); {name} again stops at once")
    with stop.installed():
        for i, (ds, name, mode) in enumerate(todo, 1):
            path = block_path(files.blocks, ds, name, mode)
            completions = _generate_block(cfg, model, tokenizer, name, convs[ds], mode, f"{ds}/{name} {mode}")
            blocks[ds, name, mode] = completions, tokenizer.eos_token
            if distributed.is_main_process():
                data = {"key": keys[ds, name, mode], "eos_token": tokenizer.eos_token, "completions": completions}
                write_text(path, json.dumps(data, default=asdict) + "\n")
            if stop.signum is not None and i < len(todo):
                raise Interrupted(
                    f"eval stopped by {signal.Signals(stop.signum).name} after {len(blocks)} of {len(keys)} blocks, "
                    f"saved in {files.blocks}. Run the same command again to compute the other {len(todo) - i}.",
                    stop.signum,
                )
    return blocks, [block_path(files.blocks, *b).name for b in todo]


def report_files(cfg: RunConfig, report: dict[str, Any]) -> EvalFiles:
    """Where `main` wrote `report`: the files of the limit it was measured with (its settings), which
    is no limit where eval.limit left out no problem."""
    return eval_files(replace(cfg, eval=replace(cfg.eval, limit=report["settings"]["limit"])))


def main(cfg: RunConfig) -> dict[str, Any]:
    """Evaluate (see the module's docstring); the report. An eval.limit that leaves out no problem of
    any dataset is the full evaluation, written as one (report_files)."""
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
    selected = {d.name: eval_selection(d, e.limit) for d in e.datasets}
    problems = {name: rows for name, (rows, _) in selected.items()}
    if e.limit and all(full for _, full in selected.values()):
        # Every problem the full evaluation has: written as one (report.md, blocks/), not as a quick check.
        sizes = ", ".join(f"{name} {len(rows)}" for name, rows in problems.items())
        limit, cfg = e.limit, replace(cfg, eval=replace(e, limit=None))
        e = cfg.eval
        log.info(
            "eval.limit %d leaves out no problem (%s): this is the full evaluation, %s",
            limit,
            sizes,
            eval_files(cfg).report_md,
        )
    blocks, computed = compute_blocks(cfg, adapters, names, problems)
    results, samples = [], []
    for ds_name, rows in problems.items():
        answers = [r["answer"] for r in rows]
        for name in names:
            greedy, eos = blocks[ds_name, name, "greedy"]
            sampled = blocks[ds_name, name, "sampled"][0] if e.num_samples > 0 else None
            results.append({"dataset": ds_name, "model": name, **metrics(greedy, sampled, answers, eos)})
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
    write_text(files.report_json, json.dumps(report, indent=2) + "\n")
    write_text(files.report_md, markdown_report(report) + "\n")
    write_text(files.samples, "".join(json.dumps(s) + "\n" for s in samples))
    write_run_record(cfg, "eval", files.record, report=str(files.report_json), computed_blocks=computed)
    if e.limit:
        full = eval_files(replace(cfg, eval=replace(e, limit=None))).report_md
        kept = (
            f"the full evaluation in {full} is left as it was"
            if full.is_file()
            else "no full evaluation yet (eval without --limit / eval.limit writes report.md)"
        )
        log.info("eval.limit %d (at most %d problems of each dataset): %s; %s", e.limit, e.limit, files.report_md, kept)
    return report
