"""Latency of `answers_equivalent` on the held-out answers (target: p99 < 50 ms per call).

Each reference answer (GSM8K after ``####``, MATH-500 ``answer``, DAPO ``answer``) is compared with
three predictions: itself, a reformatted variant (boxed/``$``-wrapped, thousands commas, ``\\dfrac``)
and a wrong one. Run: ``PYTHONPATH=src python benchmarks/bench_rewards.py [--limit N]``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

from trainer.rewards import answers_equivalent

DATA = Path(__file__).resolve().parent.parent / "data" / "eval"


def load_references() -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {"gsm8k": [], "math500": [], "dapo": []}
    for line in (DATA / "gsm8k_test.jsonl").read_text().splitlines():
        refs["gsm8k"].append(json.loads(line)["answer"].split("####")[-1].strip())
    for line in (DATA / "math500_test.jsonl").read_text().splitlines():
        refs["math500"].append(json.loads(line)["answer"])
    for line in (DATA / "dapo_sample.jsonl").read_text().splitlines():
        refs["dapo"].append(str(json.loads(line)["answer"]))
    return refs


def reformatted(ref: str) -> str:
    """An equivalent rewrite: thousands commas added or removed, fractions as \\dfrac, boxed."""
    if re.fullmatch(r"-?\d{4,}", ref):
        return f"{int(ref):,}"
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+", ref):
        return ref.replace(",", "")
    return "\\boxed{" + ref.replace("\\frac", "\\dfrac") + "}"


def wrong(ref: str) -> str:
    """A (usually) wrong answer of the same shape: the first digit run changed."""
    m = re.search(r"\d+", ref)
    if m is None:
        return ref + "+1"
    return ref[: m.start()] + str(int(m.group()) + 1) + ref[m.end() :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=0, help="references per dataset (0: all)")
    args = parser.parse_args()

    answers_equivalent("1", "1")  # import and parser construction are not per-call costs
    answers_equivalent("\\frac{1}{2}", "(3,4]")
    timings: dict[str, list[float]] = {}
    mismatches: list[str] = []
    for name, refs in load_references().items():
        refs = refs[: args.limit] if args.limit else refs
        for ref in refs:
            for kind, pred, expected in (
                ("same", ref, True),
                ("reformat", reformatted(ref), True),
                ("wrong", wrong(ref), None),
            ):
                start = time.perf_counter()
                result = answers_equivalent(pred, ref)
                timings.setdefault(name, []).append(time.perf_counter() - start)
                if expected is not None and result != expected:
                    mismatches.append(f"{name} {kind}: {pred!r} vs {ref!r}")

    def row(label: str, values: list[float]) -> str:
        ms = sorted(v * 1000 for v in values)
        p50 = statistics.median(ms)
        p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
        return f"{label:8} n={len(ms):5d}  p50={p50:7.2f} ms  p99={p99:7.2f} ms  max={ms[-1]:8.2f} ms"

    for name, values in timings.items():
        print(row(name, values))
    print(row("all", [v for values in timings.values() for v in values]))
    print(f"equivalent-variant mismatches: {len(mismatches)}")
    for line in mismatches[:20]:
        print("  ", line)


if __name__ == "__main__":
    main()
