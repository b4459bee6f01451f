"""Typed recipes: one YAML file per model/preset under `configs/`, validated before anything loads.

A recipe maps onto `RunConfig`; every field has a `help`, a default and, for a number, its range.
Unknown keys and wrong types stop the run with an error naming the key (and the closest valid key),
before any model or dataset is touched. `--set a.b=value` overrides are parsed as YAML scalars and
validated the same way.

One module per part of the recipe, as TRL keeps each trainer's config in a file of its own:
- run.py: `RunConfig`, the top-level keys, and the checks that span sections
- model.py: `model` and `lora`
- dataset.py: a training dataset (`sft.dataset`, `grpo.dataset`) and `rows` slices
- sft.py, grpo.py: the two training stages
- after_training.py: `eval` (and its datasets), `infer`, `export`
- fields.py: `setting()`, the field helper every section uses (help text, range)
- loading.py: YAML and `--set` overrides to a checked `RunConfig`, and `to_dict` back

Import from `trainer.config`: the names below are the package's public ones.
"""

from trainer.config.after_training import EvalConfig, EvalDatasetConfig, ExportConfig, InferConfig
from trainer.config.dataset import DatasetConfig, row_slice
from trainer.config.grpo import GRPOConfig
from trainer.config.loading import load_config, parse_overrides, to_dict
from trainer.config.model import LORA_TARGETS, LoraConfig, ModelConfig
from trainer.config.run import RunConfig
from trainer.config.sft import SFTConfig

__all__ = [
    "LORA_TARGETS",
    "DatasetConfig",
    "EvalConfig",
    "EvalDatasetConfig",
    "ExportConfig",
    "GRPOConfig",
    "InferConfig",
    "LoraConfig",
    "ModelConfig",
    "RunConfig",
    "SFTConfig",
    "load_config",
    "parse_overrides",
    "row_slice",
    "to_dict",
]
