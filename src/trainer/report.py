"""What people look at: the GRPO training curves (PNG), sample completions during GRPO (JSONL), and
the evaluation report (markdown)."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.volume import write_text

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Training curves


def metric_series(log_history: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) of one logged metric, skipping entries without it (and non-finite values)."""
    out = []
    for entry in log_history:
        value, step = entry.get(key), entry.get("step")
        if step is not None and isinstance(value, (int, float)) and math.isfinite(value):
            out.append((int(step), float(value)))
    return out


def reward_series(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per-step series of the total reward ('total') and each reward function's mean, from Trainer logs."""
    keys = {"reward": "total"}
    for entry in log_history:
        for key in entry:
            if key.startswith("rewards/") and key.endswith("/mean"):
                keys[key] = key.split("/")[1]
    series = {name: metric_series(log_history, key) for key, name in keys.items()}
    return {name: points for name, points in series.items() if points}


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is so far)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _window(n: int) -> int:
    return max(1, min(25, round(n / 10)))


def _curve(ax: Any, points: list[tuple[int, float]], label: str, color: Any, bold: bool = False) -> None:
    """Raw values faint, their moving average on top (one legend entry)."""
    steps, values = zip(*points, strict=True)
    w = _window(len(values))
    ax.plot(
        steps, values, color=color, alpha=0.25 if w > 1 else 1.0, lw=1, marker="o" if len(steps) < 40 else None, ms=3
    )
    if w > 1:
        ax.plot(steps, smooth(values, w), color=color, lw=2.5 if bold else 1.6, label=f"{label} (mean of {w})")
    else:
        ax.lines[-1].set_label(label)


def plot_rewards(log_history: list[dict[str, Any]], dest: Path, title: str = "GRPO") -> Path | None:
    """A PNG of the GRPO curves: total reward, each reward function, answer accuracy, completion length
    (and KL when it was logged). Raw values are drawn faint, with a moving average over them."""
    series = reward_series(log_history)
    if not series:
        log.warning("no reward values were logged; no plot written")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    (total_ax, parts_ax), (acc_ax, len_ax) = axes
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if "total" in series:
        _curve(total_ax, series["total"], "total reward", "black", bold=True)
    total_ax.set_title("total reward (weighted sum), mean over the batch")
    for i, (name, points) in enumerate(sorted((n, p) for n, p in series.items() if n != "total")):
        _curve(parts_ax, points, name, colors[i % len(colors)])
    parts_ax.set_title("each reward function, mean over the batch")
    accuracy = metric_series(log_history, "accuracy")
    if accuracy:
        _curve(acc_ax, accuracy, "accuracy", colors[2])
        acc_ax.set_ylim(-0.03, 1.03)
    else:
        acc_ax.text(0.5, 0.5, "no accuracy logged", ha="center", va="center", transform=acc_ax.transAxes)
    acc_ax.set_title("share of completions with the right answer")
    length = metric_series(log_history, "completions/mean_length")
    if length:
        _curve(len_ax, length, "mean completion tokens", colors[0])
    clipped = metric_series(log_history, "completions/clipped_ratio")
    kl = metric_series(log_history, "kl")
    if clipped or kl:
        twin = len_ax.twinx()
        if clipped:
            _curve(twin, clipped, "truncated share", colors[3])
        if kl:
            _curve(twin, kl, "KL to reference", colors[4])
        twin.set_ylim(bottom=0)
        twin.legend(fontsize=8, loc="upper right")
    len_ax.set_title("completion length" + (", truncated share" if clipped else "") + (", KL" if kl else ""))
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper left" if ax is len_ax else "best")
    for ax in axes[1]:
        ax.set_xlabel("GRPO step")
    steps = max(p[0] for points in series.values() for p in points)
    fig.suptitle(f"{title}: {steps} steps")
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------------
# One line per logging step

# (key in the Trainer's logs, label, format), in the order shown; keys a stage does not log are left out.
_LINE_FIELDS = [
    ("loss", "loss", "{:.4g}"),
    ("mean_token_accuracy", "token accuracy", "{:.3f}"),
    ("reward", "reward", "{:.3g}"),
    ("accuracy", "accuracy", "{:.2f}"),
    ("completions/mean_length", "length", "{:.1f}"),
    ("completions/clipped_ratio", "truncated", "{:.2f}"),
    ("kl", "kl", "{:.3g}"),
    # |sampling log-prob - loss log-prob| per token (trainer.rollout.fast_grpo, vLLM): rounding when on-policy.
    ("sampling/sampling_logp_difference/mean", "logp gap", "{:.2g}"),
    ("grad_norm", "grad norm", "{:.3g}"),
    ("learning_rate", "lr", "{:.2e}"),
    ("step_time", "step", "{:.2f} s"),
]


def log_line(logs: dict[str, Any], step: int, max_steps: int, first_step: int = 0, stage: str = "") -> str:
    """The Trainer's logs of one step as one line, e.g. `grpo step 5/20  reward 0.5 (format 3, ...)  lr 5.00e-04`.

    `stage` (sft, grpo) leads the line: the demo runs both with the same step counter. GRPO's
    per-reward means come in brackets after the total. The end-of-training summary says what this run
    did: `done: N steps in T s`; resumed after step `first_step`, `done: 56 steps this run (65-120) in
    T s`; ended before `max_steps` (a signal), `stopped at step S/M: ...` instead of done. Everything
    the Trainer logs still goes to TensorBoard / trackers."""
    lead = f"{stage} " if stage else ""
    if "train_runtime" in logs:
        trained = f"{step - first_step} steps this run ({first_step + 1}-{step})" if first_step else f"{step} steps"
        head = "done" if step >= max_steps else f"stopped at step {step}/{max_steps}"
        return f"{lead}{head}: {trained} in {logs['train_runtime']:.1f} s"
    parts = [f"{lead}step {step}/{max_steps}"]
    rewards = {k.split("/")[1]: v for k, v in logs.items() if k.startswith("rewards/") and k.endswith("/mean")}
    for key, label, fmt in _LINE_FIELDS:
        value = logs.get(key)
        if not isinstance(value, (int, float)):
            continue
        text = f"{label} {fmt.format(value)}"
        if key == "reward" and rewards:
            text += " (" + ", ".join(f"{name} {v:.3g}" for name, v in rewards.items()) + ")"
        parts.append(text)
    return "  ".join(parts)


# ---------------------------------------------------------------------------------------------
# Sample completions during GRPO


def completion_rows(
    logs: dict[str, Any], step: int, reward_weights: Sequence[float] | None = None
) -> list[dict[str, Any]]:
    """Rows {step, prompt, completion, rewards: {name: score}, reward, advantage} from TRL's rollout
    buffer (`GRPOTrainer._logs`: the latest generation batch). A reward that could not score a
    completion (None, NaN in TRL) is null; `reward` is the weighted sum of the others."""
    names = list(logs["rewards"])
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(names)
    columns = {name: list(logs["rewards"][name]) for name in names}
    advantages = list(logs.get("advantages") or [])
    rows = []
    for i, (prompt, completion) in enumerate(zip(logs["prompt"], logs["completion"], strict=True)):
        scores = {n: (None if math.isnan(columns[n][i]) else float(columns[n][i])) for n in names}
        rows.append(
            {
                "step": step,
                "prompt": prompt,
                "completion": completion,
                "rewards": scores,
                "reward": sum(w * s for w, s in zip(weights, scores.values(), strict=True) if s is not None),
                "advantage": float(advantages[i]) if i < len(advantages) else None,
            }
        )
    return rows


def completion_samples_callback(trainer: Any, path: Path, every: int) -> Any:
    """A TrainerCallback that appends the latest rollouts to `path` (JSONL, see completion_rows) at
    every `every`-th logged step, on the main process. On resume it first drops rows newer than the
    checkpoint, so the file matches the run. TRL itself prints such a table (log_completions) and
    sends it to W&B / trackio; this is the copy on the volume that needs no account."""
    from transformers import TrainerCallback

    class CompletionSamples(TrainerCallback):
        def __init__(self) -> None:
            self.last_step = -1

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero and path.is_file():
                keep = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= state.global_step]
                write_text(path, "".join(line + "\n" for line in keep))

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = state.global_step
            if not state.is_world_process_zero or every <= 0 or step % every or step == self.last_step:
                return
            # TRL 1.14 keeps the latest generation batch here for its own table; read, never written.
            logs = getattr(trainer, "_logs", None)
            if not logs or not logs.get("prompt"):
                return
            weights = getattr(trainer, "reward_weights", None)
            rows = completion_rows(logs, step, weights.tolist() if weights is not None else None)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as f:
                f.write("".join(json.dumps(r) + "\n" for r in rows))
            self.last_step = step

    return CompletionSamples()


# ---------------------------------------------------------------------------------------------
# Evaluation report

_COLUMNS = [
    ("dataset", "dataset", "{}"),
    ("model", "model", "{}"),
    ("n", "n", "{}"),
    ("pass@1 greedy", "pass@1_greedy", "{:.1%}"),
    ("pass@1 sampled", "pass@1_sampled", "{:.1%}"),
    ("format", "format_adherence", "{:.1%}"),
    ("mean length", "mean_completion_tokens", "{:.1f}"),
    ("truncated", "truncation_rate", "{:.1%}"),
]


def _cell(r: dict[str, Any], key: str, fmt: str) -> str:
    if r.get(key) is None:
        return "-"
    text = fmt.format(r[key])
    err = r.get(f"{key}_stderr")
    return f"{text} ± {err * 100:.1f}" if err else text


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per (dataset, model) with the evaluation metrics (± one standard error over problems)."""
    lines = ["| " + " | ".join(c[0] for c in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for r in results:
        lines.append("| " + " | ".join(_cell(r, key, fmt) for _, key, fmt in _COLUMNS) + " |")
    return "\n".join(lines)


def stderr(values: list[float]) -> float:
    """Standard error of the mean of per-problem scores (0/1 for greedy, a share for sampled, or the
    per-problem differences of two models); 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def _change(a: dict[str, Any], b: dict[str, Any], kind: str) -> str:
    """The change in pass@1 `kind` (greedy / sampled) from a to b in points, with the standard error of
    the per-problem differences where both hold per-problem scores: the two models answered the same
    problems, so this paired error is the one that says whether the change is noise (it is smaller
    than the two rows' errors combined, which treat the rows as independent samples)."""
    text = f"{100 * (b[f'pass@1_{kind}'] - a[f'pass@1_{kind}']):+.1f}"
    sa, sb = a.get(f"{kind}_scores"), b.get(f"{kind}_scores")
    if sa and sb and len(sa) == len(sb) > 1:
        text += f" ± {100 * stderr([y - x for x, y in zip(sa, sb, strict=True)]):.1f}"
    return text


def comparisons(results: list[dict[str, Any]], before: str = "sft", after: str = "grpo") -> list[str]:
    """One line per dataset: the change in pass@1 and format adherence from `before` to `after`
    (± one paired standard error where the per-problem scores are there)."""
    by = {(r["dataset"], r["model"]): r for r in results}
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        a, b = by.get((dataset, before)), by.get((dataset, after))
        if a is None or b is None:
            continue
        parts = [f"pass@1 greedy {_change(a, b, 'greedy')} points"]
        if a.get("pass@1_sampled") is not None and b.get("pass@1_sampled") is not None:
            parts.append(f"sampled {_change(a, b, 'sampled')}")
        parts.append(f"format {100 * (b['format_adherence'] - a['format_adherence']):+.1f}")
        lines.append(f"- {dataset}: {after.upper()} vs {before.upper()}: " + ", ".join(parts) + f" (n = {b['n']})")
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    """The table, the GRPO-vs-SFT changes, and the settings they were measured with."""
    s = report.get("settings") or {}
    lines = [markdown_table(report["results"])]
    changes = comparisons(report["results"])
    if changes:
        lines += ["", *changes]
    if s:
        how = "a greedy completion per problem"
        if s["num_samples"]:
            plural = "s" if s["num_samples"] > 1 else ""
            how = (
                f"one greedy and {s['num_samples']} sampled completion{plural} per problem "
                f"(temperature {s['temperature']}, top_k {s['top_k']}, seed {s['seed']})"
            )
        lines += ["", f"{how}, at most {s['max_new_tokens']} new tokens; ± is one standard error over problems."]
        if s.get("limit"):
            lines += ["", f"A quick check (eval.limit): at most the first {s['limit']} problems of each dataset."]
        if s["num_samples"] and s.get("sampling_note"):
            lines += ["", s["sampling_note"][0].upper() + s["sampling_note"][1:] + "."]
    return "\n".join(lines)
