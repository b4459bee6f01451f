"""GRPO learns, and a run shows it: reward and accuracy rise on a task the tiny model can learn, the
evaluation stage measures the gain, and the run leaves TensorBoard scalars, rollout samples and the
reward plot on the volume.

The task: products with a zero factor ("What is 7 * 0?"). After the recipe's SFT the tiny model
writes the format but cannot multiply (a few percent right on the shipped one-digit sample); on these
prompts some of its sampled answers are right and most are not, so with 8 completions per prompt
the rewards vary within groups and GRPO has a signal to follow.

Measured with this test on CPU at seeds 3407 (the recipe's), 0, 1 and 2: GRPO reward, mean of the
first 5 steps 3.1-4.2, of the last 5 steps 11.8-13.0 (the maximum is 13.0); training accuracy
0.24-0.36 -> 0.93-1.00; held-out sampled pass@1 SFT 0.07-0.17 -> GRPO 0.47-0.80, greedy GRPO 1.00.
With the advantage sign flipped, the completion mask inverted, or the rewards shuffled across
completions (scratch patches of TRL, not kept), the last-5 reward fell to -6.0 / -6.0 / -5.7 and
the test failed (docs/learning.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.cli import main

pytestmark = pytest.mark.slow
REWARDS = ["match_format_exactly", "match_format_approximately", "check_answer", "check_numbers"]


def run(stage: str, overrides: list[str]) -> int:
    return main([stage, "--config", "configs/tiny.yaml", *[a for o in overrides for a in ("--set", o)]])


def zero_products(phrases: list[str]) -> list[dict[str, str]]:
    return [
        {"prompt": p.format(a=a, b=b), "solution": "0"} for p in phrases for n in range(10) for a, b in ((n, 0), (0, n))
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_grpo_raises_reward_and_heldout_accuracy(volume: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", zero_products(["What is {a} * {b}?", "Compute {a} * {b}."]))
    heldout = [{"question": r["prompt"], "answer": r["solution"]} for r in zero_products(["Calculate {a} * {b}."])]
    held = write_jsonl(tmp_path / "heldout.jsonl", heldout)
    common = [f"model.name={tiny_model_dir}", "report_to=[]"]
    assert run("sft", common) == 0  # the recipe's SFT: 4 epochs over the shipped sample

    steps = 30
    grpo = [
        f"grpo.dataset.path={train}",
        f"grpo.max_steps={steps}",
        f"grpo.save_steps={steps}",
        "grpo.learning_rate=5e-4",
        "grpo.num_generations=8",
        "grpo.per_device_train_batch_size=32",  # 4 prompts x 8 completions
        "grpo.log_completions=false",
        "grpo.log_completions_steps=0",
    ]
    assert run("grpo", common + grpo) == 0
    state = volume / f"tiny/grpo/checkpoints/checkpoint-{steps}/trainer_state.json"
    logged = [e for e in json.loads(state.read_text())["log_history"] if "reward" in e]
    assert [e["step"] for e in logged] == list(range(1, steps + 1))
    assert all(f"rewards/{name}/mean" in logged[0] for name in REWARDS)  # every reward of the recipe was scored
    reward = [e["reward"] for e in logged]
    accuracy = [e["accuracy"] for e in logged]
    assert mean(reward[-5:]) >= mean(reward[:5]) + 4.0, reward
    assert mean(accuracy[-5:]) >= mean(accuracy[:5]) + 0.3, accuracy

    # The gain shows in the evaluation stage, on phrasings GRPO never saw.
    evaluation = [
        f"eval.datasets=[{{name: zero, path: {held}}}]",
        "eval.models=[sft, grpo]",
        "eval.num_samples=4",
        "eval.max_new_tokens=32",
    ]
    assert run("eval", common + evaluation) == 0
    results = {r["model"]: r for r in json.loads((volume / "tiny/eval/report.json").read_text())["results"]}
    assert results["grpo"]["n"] == len(heldout)
    # Sampled, not greedy: depending on the seed, SFT's greedy answer to these is already always 0 or never.
    assert results["grpo"]["pass@1_sampled"] >= results["sft"]["pass@1_sampled"] + 0.2, results
    assert results["grpo"]["pass@1_greedy"] >= 0.9 and results["grpo"]["format_adherence"] >= 0.9, results


def test_grpo_run_leaves_curves_samples_and_plot(volume: Path, tiny_model_dir: Path) -> None:
    """TensorBoard scalars (each reward, total, KL, length, learning rate, step time), the rollout JSONL
    every N steps (trimmed to the checkpoint on resume), and the PNG next to the adapter."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = [f"model.name={tiny_model_dir}", "report_to=[tensorboard]", "sft.max_steps=2"]
    grpo = [
        "grpo.max_steps=4",
        "grpo.save_steps=2",
        "grpo.beta=0.04",  # KL is logged only with a reference model
        "grpo.max_completion_length=12",
        "grpo.log_completions=false",
        "grpo.log_completions_steps=2",
    ]
    assert run("sft", common) == 0
    assert run("grpo", common + grpo) == 0
    stage = volume / "tiny/grpo"

    events = EventAccumulator(str(stage / "logs"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    wanted = {f"train/rewards/{name}/mean" for name in REWARDS} | {
        "train/reward",
        "train/kl",
        "train/completions/mean_length",
        "train/learning_rate",
        "train/step_time",
        "train/accuracy",
    }
    assert wanted <= tags, sorted(wanted - tags)
    assert [e.step for e in events.Scalars("train/reward")] == [1, 2, 3, 4]

    samples = stage / "completions.jsonl"
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] * 8 + [4] * 8  # the generation batch: 2 prompts x 4
    assert all(set(r["rewards"]) == set(REWARDS) for r in rows)
    assert all(r["reward"] == pytest.approx(sum(r["rewards"].values())) for r in rows)
    assert all(r["prompt"].endswith("<start_working_out>") and isinstance(r["completion"], str) for r in rows)
    assert (stage / "rewards.png").stat().st_size > 20_000

    # Killed after step 4's samples were written but before its checkpoint: the resumed run starts
    # from checkpoint-2, drops the step-4 rows and writes them again, once.
    import shutil

    shutil.rmtree(stage / "checkpoints/checkpoint-4")
    assert run("grpo", common + grpo) == 0
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [r["step"] for r in rows] == [2] * 8 + [4] * 8
