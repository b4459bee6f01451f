"""Stage 2: GRPO on math problems, scored by the reward functions, from the SFT adapter.

    python -m trainer grpo --config configs/qwen3-4b.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.config import RunConfig
from trainer.data import grpo_prompts
from trainer.errors import UserError
from trainer.training import check_backend, common_args, finish, last_checkpoint, training_model
from trainer.volume import find_adapter, stage_dir

log = logging.getLogger(__name__)


def start_adapter(cfg: RunConfig) -> Path:
    path = find_adapter(cfg, cfg.grpo.start_from or "sft")
    if path is None:
        raise UserError(
            f"grpo starts from an SFT adapter and none was found in {stage_dir(cfg, 'sft')}; "
            "run the sft stage first (make sft) or set grpo.start_from=<adapter folder>."
        )
    return path


def main(cfg: RunConfig) -> Path:
    check_backend(cfg, cfg.grpo.optim)
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from trainer.report import plot_rewards
    from trainer.rewards import build_reward_funcs

    g = cfg.grpo
    start = start_adapter(cfg)
    log.info("GRPO starts from the adapter %s", start)
    model, tokenizer = training_model(cfg, start_adapter=start)
    rows, cut = grpo_prompts(g.dataset, tokenizer, g.prompt_length_quantile)
    max_prompt = g.max_prompt_length or cut + 1
    max_completion = g.max_completion_length or cfg.model.max_seq_length - max_prompt
    if max_completion <= 0:
        raise UserError(
            f"no room for completions: max_seq_length {cfg.model.max_seq_length} - prompt length {max_prompt}; "
            "raise model.max_seq_length or set grpo.max_completion_length."
        )
    args = GRPOConfig(
        **common_args(cfg, "grpo", g),
        warmup_steps=g.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        num_generations=g.num_generations,
        max_completion_length=max_completion,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        min_p=g.min_p,
        loss_type=g.loss_type,
        beta=g.beta,
        epsilon=g.epsilon,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        reward_weights=g.reward_weights,
        use_vllm=g.use_vllm,
        vllm_mode=g.vllm_mode,
        vllm_gpu_memory_utilization=g.vllm_gpu_memory_utilization,
        log_completions=g.log_completions,
    )
    reward_funcs = build_reward_funcs(g.reward_set, g.rewards, tokenizer.eos_token, g.reward_error_score)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(args))
    adapter = finish(
        cfg, "grpo", trainer, tokenizer,
        start_adapter=str(start), max_prompt_length=max_prompt, max_completion_length=max_completion,
    )
    plot_rewards(trainer.state.log_history, adapter.parent / "rewards.png")
    return adapter
