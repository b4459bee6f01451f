"""Pictures and tables people look at: the GRPO reward curves and the evaluation table."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def reward_series(log_history: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Per-step series of the total reward and each reward function's mean, from Trainer logs."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in log_history:
        step = entry.get("step")
        for key, value in entry.items():
            if step is None or not isinstance(value, (int, float)):
                continue
            if key == "reward" or (key.startswith("rewards/") and key.endswith("/mean")):
                name = "total" if key == "reward" else key.split("/")[1]
                series.setdefault(name, []).append((int(step), float(value)))
    return series


def plot_rewards(log_history: list[dict[str, Any]], dest: Path) -> Path | None:
    """A PNG of the reward curves (one line per reward function, plus the total)."""
    series = reward_series(log_history)
    if not series:
        log.warning("no reward values were logged; no plot written")
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, points in sorted(series.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, lw=2.5 if name == "total" else 1.2, label=name)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    ax.set_title("GRPO reward curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, dest)
    return dest


def markdown_table(results: list[dict[str, Any]]) -> str:
    """One row per (dataset, model) with the evaluation metrics."""
    cols = [
        ("dataset", "dataset", "{}"),
        ("model", "model", "{}"),
        ("n", "n", "{}"),
        ("pass@1 greedy", "pass@1_greedy", "{:.1%}"),
        ("pass@1 sampled", "pass@1_sampled", "{:.1%}"),
        ("format", "format_adherence", "{:.1%}"),
        ("mean length", "mean_completion_tokens", "{:.1f}"),
        ("truncated", "truncation_rate", "{:.1%}"),
    ]
    lines = ["| " + " | ".join(c[0] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "-" for _, key, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
