"""Synthetic one-step arithmetic problems: the shipped sample data of the embedded default.

A tiny model can learn these within minutes on a CPU, so the demo and the learning test show a
real effect. Rows use the column names of the real datasets (OpenMathReasoning for SFT,
DAPO-Math-17k-Processed for GRPO) so the same loaders and column mappings serve both.

Regenerate the shipped files with `python -m trainer.synthetic src/trainer/sample_data`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_PHRASES = ["What is {a} {op} {b}?", "Compute {a} {op} {b}.", "Calculate {a} {op} {b}."]


def problem(rng: random.Random) -> tuple[str, str, str]:
    """(question, working, answer) for one random one-digit problem."""
    a, b, op = rng.randint(0, 9), rng.randint(0, 9), rng.choice(list(_OPS))
    answer = str(_OPS[op](a, b))
    return rng.choice(_PHRASES).format(a=a, op=op, b=b), f"{a} {op} {b} = {answer}.", answer


def sft_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        q, working, answer = problem(rng)
        rows.append(
            {
                "problem": q,
                "generated_solution": f"<think>\n{working}\n</think>\nThe answer is {answer}.",
                "expected_answer": answer,
            }
        )
    return rows


def grpo_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"prompt": q, "solution": answer} for q, _, answer in (problem(rng) for _ in range(n))]


def eval_rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"question": q, "answer": answer} for q, _, answer in (problem(rng) for _ in range(n))]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(out: str) -> None:
    root = Path(out)
    sft = sft_rows(240, seed=1)
    # Non-numeric answers, as in OpenMathReasoning: the SFT filter must drop them.
    sft += [
        {"problem": "Simplify x + x.", "generated_solution": "<think>\nx + x = 2x.\n</think>", "expected_answer": "2x"},
        {
            "problem": "Write one half as a fraction.",
            "generated_solution": "<think>\n1/2\n</think>",
            "expected_answer": "\\frac{1}{2}",
        },
    ]
    write_jsonl(root / "sft.jsonl", sft)
    write_jsonl(root / "grpo.jsonl", grpo_rows(240, seed=2))
    write_jsonl(root / "heldout.jsonl", eval_rows(64, seed=3))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "src/trainer/sample_data")
