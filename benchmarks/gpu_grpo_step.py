"""GRPO step time and peak GPU memory of a recipe on one GPU, through the product's own grpo stage.

    python benchmarks/gpu_grpo_step.py --config configs/qwen3-4b.yaml --set grpo.save_steps=3 ...

Takes the CLI's arguments (GRPO starts from the run's SFT adapter, or from grpo.start_from).
Runs the stage in this process, so that torch's peak-memory counters cover it, with Unsloth imported
first as the CLI does; then prints TRL's `step_time` of each step (rollout generation, rewards,
forward and backward) and torch's peak allocated and reserved GPU memory for the whole stage (model
load included; reserved is what the caching allocator held, CUDA's own context not counted).
The step times are read from the last checkpoint's trainer_state.json, so grpo.save_steps must
divide grpo.max_steps. GPU_MEMORY_CAP_GIB=22 caps what this process may allocate on the GPU
(torch.cuda.set_per_process_memory_fraction), to show the recipe fits a 24 GB card on a bigger one.
"""

from __future__ import annotations

import json
import statistics
import sys

from trainer.cli import main as cli_main
from trainer.cli import parse_args, setup_logging
from trainer.config import load_config
from trainer.distributed import one_gpu_per_process
from trainer.volume import stage_dir


def main(argv: list[str]) -> int:
    args = parse_args(["grpo", *argv])
    cfg = load_config(args.config, args.overrides)
    # Before Unsloth, as the CLI does: its import would leave the stage's INFO lines out, and starts CUDA.
    setup_logging()
    one_gpu_per_process()
    if cfg.backend == "unsloth":
        from trainer.unsloth_backend import activate

        activate()
    import os
    import threading

    import torch

    cap = float(os.environ.get("GPU_MEMORY_CAP_GIB", 0))
    if cap:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 2**30 / total))
        print(f"GPU memory capped at {cap:.1f} GiB of {total / 2**30:.1f}", flush=True)

    def report_peak() -> None:  # so that a run stopped mid-way still tells its peak so far
        while not done.wait(30):
            print(f"[peak so far] {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB allocated", flush=True)

    done = threading.Event()
    threading.Thread(target=report_peak, daemon=True).start()
    try:
        rc = cli_main(["grpo", *argv])
    finally:
        done.set()
    if rc:
        return rc
    checkpoints = sorted(
        (stage_dir(cfg, "grpo") / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "step_time" in h]
    run = json.loads((stage_dir(cfg, "grpo") / "run.json").read_text())
    result = {
        "device": torch.cuda.get_device_name(),
        "model": cfg.model.name,
        "backend": cfg.backend,
        "max_prompt_length": run.get("max_prompt_length"),
        "max_completion_length": run.get("max_completion_length"),
        "num_generations": cfg.grpo.num_generations,
        "steps": [
            {k: h.get(k) for k in ("step", "step_time", "completions/mean_length", "completions/clipped_ratio", "loss")}
            for h in steps
        ],
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
        "memory_cap_gib": cap or None,
    }
    (stage_dir(cfg, "grpo") / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    later = [s["step_time"] for s in result["steps"][1:]]
    print(
        f"\n{result['device']}, {cfg.model.name}, prompt <= {result['max_prompt_length']} + completion <= "
        f"{result['max_completion_length']} tokens, {cfg.grpo.num_generations} generations"
    )
    for s in result["steps"]:
        print(f"  step {s['step']}: {s['step_time']:.1f} s, mean completion {s['completions/mean_length']:.0f} tokens")
    if later:
        print(f"  median of steps 2+: {statistics.median(later):.1f} s (step 1 includes compilation and tuning)")
    print(
        f"  peak GPU memory: {result['peak_allocated_gib']:.1f} GiB allocated, {result['peak_reserved_gib']:.1f} GiB reserved"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
