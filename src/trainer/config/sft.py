"""The recipe's `sft` section: stage 1, supervised training on worked solutions in the reasoning format."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.dataset import DatasetConfig
from trainer.config.fields import setting
from trainer.errors import ConfigError


@dataclass
class SFTConfig:
    dataset: DatasetConfig = setting(
        DatasetConfig(path="unsloth/OpenMathReasoning-mini", split="cot"),
        "SFT data: columns problem, solution, answer.",
    )
    learning_rate: float = setting(2e-4, "Peak learning rate.", gt=0)
    num_train_epochs: float = setting(2.0, "Epochs over the SFT data (ignored when max_steps > 0).", gt=0)
    max_steps: int = setting(-1, "Stop after this many optimizer steps; -1 runs num_train_epochs.", ge=-1)
    per_device_train_batch_size: int = setting(1, "Sequences per device per micro-batch.", ge=1)
    gradient_accumulation_steps: int = setting(1, "Micro-batches per optimizer step.", ge=1)
    warmup_steps: int = setting(5, "Linear warmup steps.", ge=0)
    optim: str = setting("adamw_8bit", "Optimizer name (transformers). adamw_8bit needs bitsandbytes (GPU).")
    weight_decay: float = setting(0.001, "Weight decay.", ge=0)
    lr_scheduler_type: str = setting("linear", "Learning-rate schedule.")
    logging_steps: int = setting(1, "Log every N steps.", ge=1)
    save_steps: int = setting(500, "Write a resumable checkpoint every N steps.", ge=1)
    keep_checkpoints: int = setting(
        2, "Resumable checkpoints kept (the newest verified ones); older ones are deleted. At least 1.", ge=1
    )

    def __post_init__(self) -> None:
        # transformers reads 0 as unset and trains num_train_epochs, which is what -1 says: a 0 meant
        # as "no steps" would train the whole schedule.
        if self.max_steps == 0:
            raise ConfigError("config key 'sft.max_steps' must be -1 (run num_train_epochs) or at least 1, got 0.")
