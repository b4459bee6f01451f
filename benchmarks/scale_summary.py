"""The table of `scripts/gpu-check.sh scale`: each run's step time and throughput, read from the
product's own records, and the scaling efficiency of a several-GPU run against a one-GPU run.

    python benchmarks/scale_summary.py OUT SLUG:ENGINE:STAGE_DIR ... [--pair ONE_SLUG MANY_SLUG]

STAGE_DIR is a run's `<CHECKPOINT_DIR>/<run_name>/<stage>`: its `run.json` (processes, batch) and
the newest checkpoint's `trainer_state.json` (every logged step). GRPO: TRL's `step_time` per step
(generation, rewards, forward and backward, on the main process), the first step left out (it
compiles, captures the decode graphs and times the decode kernels' tiles); generated tokens per
second = completions per step (per-GPU batch x processes x gradient accumulation) x their mean
length / step_time. SFT logs no step time: train_runtime (the log's `done: N steps in T s`, OUT/SLUG.log)
/ steps, first step included, and the tokens TRL counted (`num_tokens`, all processes) / train_runtime. Peak memory: the highest nvidia-smi
`memory.used` of each GPU while the run ran (OUT/SLUG.smi.csv: index, MiB, one line a second).
A run without records (it failed or ran out of time) gets a row saying so; its log is OUT/SLUG.log.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any


def newest_checkpoint(stage_dir: Path) -> Path | None:
    from trainer.resilience.checkpoints import checkpoints  # src/ is on PYTHONPATH (gpu-check.sh)

    found = checkpoints(stage_dir / "checkpoints")  # oldest step first
    return found[-1] if found else None


def grpo_steps(history: list[dict[str, Any]], completions: int) -> list[tuple[int, float, float]]:
    """(step, step_time s, generated tokens/s) of each logged GRPO step after the first.

    >>> grpo_steps([{"step": 1, "step_time": 9.0, "completions/mean_length": 8.0},
    ...             {"step": 2, "step_time": 2.0, "completions/mean_length": 8.0}], 4)
    [(2, 2.0, 16.0)]
    """
    rows = []
    for h in history:
        if h.get("step", 0) < 2 or "step_time" not in h or "completions/mean_length" not in h:
            continue
        rows.append((h["step"], h["step_time"], completions * h["completions/mean_length"] / h["step_time"]))
    return rows


def peak_gib(smi: Path) -> dict[int, float]:
    """Highest memory.used per GPU index in an nvidia-smi CSV (`index, memory.used [MiB]` lines)."""
    peaks: dict[int, float] = {}
    if not smi.is_file():
        return peaks
    for line in smi.read_text().splitlines():
        try:
            index, mib = (int(float(x)) for x in line.split(","))
        except ValueError:
            continue
        peaks[index] = max(peaks.get(index, 0.0), mib / 1024)
    return peaks


def summarise(out: Path, slug: str, engine: str, stage_dir: Path) -> dict[str, Any]:
    """One row of the table, as a dict (see `row_text`); `tok_s` is None where no step was timed."""
    row: dict[str, Any] = {"slug": slug, "engine": engine, "tok_s": None, "peaks": peak_gib(out / f"{slug}.smi.csv")}
    record_path, checkpoint = stage_dir / "run.json", newest_checkpoint(stage_dir)
    if not record_path.is_file() or checkpoint is None:
        left = f"; left {checkpoint.name}" if checkpoint else ""
        row["note"] = f"did not finish (no run.json{left}; log: {slug}.log)"
        return row
    record = json.loads(record_path.read_text())
    history = json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]
    stage = record["stage"]
    cfg = record["config"][stage]
    processes = record.get("num_processes", 1)
    row.update(stage=stage, processes=processes, batch=cfg["per_device_train_batch_size"], steps=record["global_step"])
    if stage == "grpo":
        completions = cfg["per_device_train_batch_size"] * processes * cfg["gradient_accumulation_steps"]
        steps = grpo_steps(history, completions)
        row["rollouts"] = record["config"]["grpo"]["rollout_engine"]
        row["length"] = record.get("max_completion_length")
        if steps:
            row["s_step"] = statistics.median(s[1] for s in steps)
            row["each"] = [round(s[1], 2) for s in steps]
            row["tok_s"] = statistics.median(s[2] for s in steps)
        else:
            row["note"] = "no step after the first was logged"
    else:
        # The checkpoint is written before training ends: train_runtime only reaches the log's last line.
        log = out / f"{slug}.log"
        done = re.findall(r"done: (\d+) steps in ([\d.]+) s", log.read_text(errors="replace")) if log.is_file() else []
        tokens = max((h.get("num_tokens", 0) for h in history), default=0)
        if not done:
            row["note"] = f"no 'done: N steps in T s' line in {slug}.log"
        else:
            steps, runtime = int(done[-1][0]), float(done[-1][1])
            row["s_step"] = runtime / max(steps, 1)
            row["tok_s"] = tokens / runtime if tokens else None
            row["each"] = "first step included"
    return row


def row_text(r: dict[str, Any]) -> str:
    peaks = ", ".join(f"GPU{i} {g:.1f}" for i, g in sorted(r["peaks"].items())) or "-"
    if "note" in r and "s_step" not in r:
        return f"| {r['slug']} | {r['engine']} | {r.get('processes', '-')} | | | | {r['note']} | | | {peaks} |"
    tok = "-" if r["tok_s"] is None else f"{r['tok_s']:,.0f}"
    per_gpu = "-" if r["tok_s"] is None else f"{r['tok_s'] / r['processes']:,.0f}"
    each = r.get("each", "")
    return (
        f"| {r['slug']} | {r['engine']} | {r['processes']} | {r.get('rollouts', '-')} | {r['batch']} | "
        f"{r.get('length', '-')} | {r['s_step']:.2f} ({each}) | {tok} | {per_gpu} | {peaks} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the check's output folder (SLUG.smi.csv, SLUG.log)")
    p.add_argument("runs", nargs="+", metavar="SLUG:ENGINE:STAGE_DIR")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("ONE", "MANY"),
                   help="print the scaling of run MANY against run ONE")  # fmt: skip
    args = p.parse_args(argv)
    rows = {}
    for spec in args.runs:
        slug, engine, stage_dir = spec.split(":", 2)
        rows[slug] = summarise(args.out, slug, engine, Path(stage_dir))
    print("| run | engine | processes | rollouts | per-GPU batch | completion tokens (max) | s/step, median (timed steps) "
          "| generated tok/s | per GPU | peak GiB (nvidia-smi) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows.values():
        print(row_text(r))
    for one, many in args.pair:
        a, b = rows.get(one), rows.get(many)
        if not a and not b:  # neither ran in this call
            continue
        if not a or not b:
            print(f"scaling {many} vs {one}: not measured ({many if a else one} did not run in this call)")
            continue
        if a["tok_s"] is None or b["tok_s"] is None:
            print(f"scaling {many} vs {one}: not measured (a run has no timed steps)")
            continue
        ratio = b["tok_s"] / a["tok_s"]
        n = b["processes"] / a["processes"]
        print(f"scaling {many} vs {one}: generated tok/s x{ratio:.2f} on {n:g}x the GPUs, efficiency {ratio / n:.0%}; "
              f"s/step {a['s_step']:.2f} -> {b['s_step']:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
