"""Stage 1: supervised fine-tuning that teaches the reasoning format.

python -m trainer sft --config configs/qwen3-4b.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.config import RunConfig
from trainer.data import sft_texts
from trainer.resilience.resume import check_resume
from trainer.training import check_backend, common_args, finish, train, training_model

log = logging.getLogger(__name__)


def main(cfg: RunConfig) -> Path:
    check_backend(cfg, cfg.sft.optim)
    if (finished := check_resume(cfg, "sft")) is not None:
        return finished
    import datasets
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = training_model(cfg, start_adapter=None)
    texts = sft_texts(cfg.sft.dataset, tokenizer, cfg.model.max_seq_length)
    args = SFTConfig(
        **common_args(cfg, "sft", cfg.sft),
        num_train_epochs=cfg.sft.num_train_epochs,
        warmup_steps=cfg.sft.warmup_steps,
        max_length=cfg.model.max_seq_length,
        dataset_text_field="text",
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
    )
    train(trainer, cfg, "sft")
    return finish(cfg, "sft", trainer, tokenizer, rows=len(texts))
