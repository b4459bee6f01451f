"""Stage 2: GRPO on math problems, scored by the reward functions, from the SFT adapter.

python -m trainer grpo --config configs/qwen3-4b.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from trainer import distributed
from trainer.config import RunConfig
from trainer.data import grpo_prompts
from trainer.errors import UserError
from trainer.generation import rollouts_with_recipe_sampling
from trainer.models import vllm_memory_share
from trainer.resilience.resume import START_WEIGHTS, adapter_weights, check_resume
from trainer.training import (
    check_backend,
    common_args,
    finish,
    report_overrides,
    train,
    training_model,
    use_vllm,
)
from trainer.volume import find_adapter, stage_dir

log = logging.getLogger(__name__)


def start_adapter(cfg: RunConfig) -> Path:
    path = find_adapter(cfg, cfg.grpo.start_from or "sft")
    if path is None:
        raise UserError(
            f"grpo starts from an SFT adapter and none was found in {stage_dir(cfg, 'sft')}; "
            "run the sft stage first (python -m trainer sft, or make sft) or set grpo.start_from=<adapter folder>."
        )
    return path


def vllm_args(cfg: RunConfig, vllm: bool) -> dict[str, Any]:
    """GRPOConfig's rollout settings from the recipe; `vllm`: rollouts go to vLLM (training.use_vllm)."""
    g = cfg.grpo
    return dict(
        use_vllm=vllm,
        vllm_mode=g.vllm_mode,
        vllm_gpu_memory_utilization=vllm_memory_share(cfg),
        # No rollout is longer than max_seq_length (prompt + completion). Unset, vLLM sizes its engine
        # for the model's whole context (40960 tokens on Qwen3-4B) and will not start where its share
        # of memory cannot cache one sequence that long.
        vllm_max_model_length=cfg.model.max_seq_length,
        vllm_importance_sampling_correction=g.vllm_importance_sampling_correction,
        vllm_server_host=g.vllm_server_host,
        vllm_server_port=g.vllm_server_port,
        # Nothing beyond the recipe's sampling fields: rollouts run under recipe_sampling_only (main).
        generation_kwargs=None,
    )


def main(cfg: RunConfig) -> Path:
    check_backend(cfg, cfg.grpo.optim)
    distributed.check_batch_geometry(cfg, distributed.num_processes())
    distributed.check_rollout_engine(cfg)
    if (finished := check_resume(cfg, "grpo")) is not None:
        return finished
    import datasets
    from trl import GRPOConfig, GRPOTrainer

    from trainer.report import completion_samples_callback, plot_rewards
    from trainer.rewards import build_reward_funcs
    from trainer.rollout.fast_grpo import trainer_class

    g = cfg.grpo
    start = start_adapter(cfg)
    log.info("GRPO starts from the adapter %s", start)
    vllm = use_vllm(cfg)
    model, tokenizer = training_model(cfg, start_adapter=start, fast_inference=vllm)
    seq = cfg.model.max_seq_length
    # Prompts must fit beside the completions: a set max_prompt_length, else what the set
    # max_completion_length (or one token) leaves; the config has checked that the two fit.
    room = g.max_prompt_length or seq - (g.max_completion_length or 1)
    rows, cut = grpo_prompts(g.dataset, tokenizer, g.prompt_length_quantile, room)
    max_prompt = g.max_prompt_length or min(cut + 1, room)
    max_completion = g.max_completion_length or seq - max_prompt
    requested = dict(
        **common_args(cfg, "grpo", g),
        warmup_steps=g.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        num_generations=g.num_generations,
        max_completion_length=max_completion,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        min_p=0.0 if g.min_p is None else g.min_p,  # None would be filled from the model's generation_config
        loss_type=g.loss_type,
        beta=g.beta,
        epsilon=g.epsilon,
        epsilon_high=g.epsilon if g.epsilon_high is None else g.epsilon_high,
        scale_rewards=g.scale_rewards,
        mask_truncated_completions=g.mask_truncated_completions,
        reward_weights=g.reward_weights,
        log_completions=g.log_completions,
        **vllm_args(cfg, vllm),
    )
    args = GRPOConfig(**requested)
    reward_funcs = build_reward_funcs(g.reward_set, g.rewards, tokenizer.eos_token, g.reward_error_score)
    trainer = trainer_class(cfg, GRPOTrainer)(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=datasets.Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    log.info("GRPO trainer: %s.%s", type(trainer).__module__, type(trainer).__name__)
    rollouts_with_recipe_sampling(trainer)
    if cfg.backend == "unsloth" and not vllm:
        from trainer.unsloth_backend import rollouts_in_inference_mode

        rollouts_in_inference_mode(trainer, cfg)
    report_overrides(trainer.args, requested)
    samples = stage_dir(cfg, "grpo") / "completions.jsonl"
    trainer.add_callback(completion_samples_callback(trainer, samples, g.log_completions_steps))
    train(trainer, cfg, "grpo")
    adapter = finish(
        cfg,
        "grpo",
        trainer,
        tokenizer,
        start_adapter=str(start),
        **{START_WEIGHTS: adapter_weights(start)},
        max_prompt_length=max_prompt,
        max_completion_length=max_completion,
    )
    if distributed.is_main_process():
        plot_rewards(trainer.state.log_history, adapter.parent / "rewards.png", title=f"GRPO, run {cfg.run_name}")
    return adapter
