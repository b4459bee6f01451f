"""The recipe's `grpo` section: stage 2, reinforcement learning (schedule, sampling, loss, rewards,
vLLM, rollout engine, logging of rollouts).

Longer than the other sections because GRPO has the most settings; several are written out only
because Unsloth would otherwise change them silently (their help says which).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from trainer.config.dataset import DatasetConfig
from trainer.config.fields import setting


@dataclass
class GRPOConfig:
    dataset: DatasetConfig = setting(
        DatasetConfig(path="open-r1/DAPO-Math-17k-Processed", name="en", columns={"answer": "solution"}),
        "GRPO data: columns prompt, answer.",
    )
    start_from: str | None = setting(
        None, "Adapter to start from; default: this run's SFT adapter on the checkpoint volume."
    )
    learning_rate: float = setting(5e-6, "Peak learning rate.", gt=0)
    weight_decay: float = setting(0.001, "Weight decay.", ge=0)
    warmup_ratio: float = setting(0.1, "Share of steps spent in linear warmup.", ge=0, lt=1)
    lr_scheduler_type: str = setting("linear", "Learning-rate schedule.")
    optim: str = setting("adamw_8bit", "Optimizer name (transformers).")
    max_steps: int = setting(100, "Optimizer steps.", ge=1)
    save_steps: int = setting(100, "Write a resumable checkpoint every N steps.", ge=1)
    keep_checkpoints: int = setting(
        2, "Resumable checkpoints kept (the newest verified ones); older ones are deleted. At least 1.", ge=1
    )
    logging_steps: int = setting(1, "Log every N steps.", ge=1)
    num_generations: int = setting(4, "Completions sampled per prompt (the GRPO group).", ge=2)
    per_device_train_batch_size: int = setting(
        4,
        "Completions per device per micro-batch. per_device_train_batch_size x processes x "
        "gradient_accumulation_steps must be a multiple of num_generations (checked at start).",
        ge=1,
    )
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step.", ge=1)
    temperature: float = setting(1.0, "Sampling temperature of rollouts.", gt=0)
    top_p: float = setting(1.0, "Nucleus sampling of rollouts.", gt=0, le=1)
    top_k: int = setting(0, "Top-k sampling of rollouts (0: off).", ge=0)
    min_p: float | None = setting(0.1, "Min-p sampling of rollouts.", ge=0, le=1)
    prompt_length_quantile: float = setting(
        0.9, "Prompts longer than this quantile of prompt token lengths are dropped.", gt=0, le=1
    )
    max_prompt_length: int | None = setting(
        None, "Longest prompt in tokens; default: the quantile cut above + 1.", ge=1
    )
    max_completion_length: int | None = setting(
        None, "Longest completion in tokens; default: max_seq_length - max_prompt_length.", ge=1
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = setting(
        "dapo", "GRPO loss normalisation (TRL loss_type). Stated here because Unsloth changes it silently."
    )
    beta: float = setting(0.0, "KL coefficient; 0 loads no reference model.", ge=0)
    epsilon: float = setting(0.2, "PPO clip range.", ge=0)
    epsilon_high: float | None = setting(
        None,
        "Upper clip range; default: epsilon. Always passed to the trainer, because Unsloth sets 0.28 "
        "(the DAPO paper's) for loss_type dapo when it is left unset.",
        ge=0,
    )
    scale_rewards: Literal["group", "batch", "none"] = setting("group", "Advantage scaling.")
    mask_truncated_completions: bool = setting(
        False,
        "Exclude completions cut at max_completion_length from the loss. Always passed to the trainer, "
        "because Unsloth sets true for loss_type dapo when it is left unset.",
    )
    reward_set: Literal["default", "seed"] = setting(
        "default", "'seed': the reference recipe's rewards as they are; 'default': the same with defects fixed."
    )
    rewards: list[str] = setting(
        ["match_format_exactly", "match_format_approximately", "check_answer", "check_numbers"],
        "Reward functions by name, from the chosen set.",
    )
    reward_weights: list[float] | None = setting(None, "One weight per reward; default all 1.0.")
    reward_error_score: float = setting(
        -5.0, "Score of a completion on which a reward function raised (the run goes on)."
    )
    use_vllm: bool = setting(
        False, "Generate rollouts with vLLM where it imports (the GPU image); the model's generate otherwise."
    )
    vllm_importance_sampling_correction: bool = setting(
        False,
        "Correct for the gap between vLLM's and the trainer's token probabilities (TRL's default is on, "
        "Unsloth's off; off is what the reference recipe ran).",
    )
    vllm_mode: Literal["colocate", "server"] = setting(
        "colocate", "vLLM in the trainer process, or a trl vllm-serve server."
    )
    vllm_gpu_memory_utilization: float | None = setting(
        None,
        "Share of GPU memory vLLM may take (colocate); default: 0.9 on backend unsloth (vLLM holds the "
        "only copy of the weights), 0.3 on hf (TRL's: vLLM's copy sits beside the trainer's).",
        gt=0,
        le=1,
    )
    vllm_server_host: str = setting(
        "0.0.0.0",
        "Host of the `trl vllm-serve` server (vllm_mode: server); 'vllm' is the compose service (docs/scaling.md).",
    )
    vllm_server_port: int = setting(8000, "Port of the `trl vllm-serve` server (vllm_mode: server).", ge=1, le=65535)
    rollout_engine: Literal["trl", "fast"] = setting(
        "fast",
        "Rollouts when vLLM is off, on backend hf: 'fast' decodes with trainer.rollout (static KV cache, "
        "one CUDA-graph decode step per token; same tokens as generate under greedy decoding; "
        "docs/benchmarks.md); 'trl': TRL's call of the model's generate. Backend unsloth uses its own.",
    )
    log_completions: bool = setting(
        False,
        "Print TRL's table of sample completions at each log step (and send it to W&B / trackio). Off by "
        "default: the tables swamp the log; the same rollouts go to grpo/completions.jsonl (log_completions_steps).",
    )
    log_completions_steps: int = setting(
        10,
        "Every N steps, append the latest rollouts (prompt, completion, each reward, advantage) to "
        "grpo/completions.jsonl on the volume; 0: never.",
        ge=0,
    )
