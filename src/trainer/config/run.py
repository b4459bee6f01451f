"""`RunConfig`: the whole recipe (top-level keys and one section per stage), and the checks that
span sections (rewards and their weights, GRPO lengths against `model.max_seq_length`, 4-bit and
GGUF loading against the backend and vLLM)."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from trainer.config.after_training import EvalConfig, ExportConfig, InferConfig
from trainer.config.fields import setting
from trainer.config.grpo import GRPOConfig
from trainer.config.model import LoraConfig, ModelConfig
from trainer.config.sft import SFTConfig
from trainer.errors import ConfigError

# The trackers the product supports in report_to ('none': as an empty list). transformers knows more
# (mlflow, comet_ml, ...), but none of those is installed or documented here.
REPORT_TO = ("tensorboard", "wandb", "trackio", "none")

# run_name is one folder under CHECKPOINT_DIR: no separators, no '..', not hidden, not empty.
_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


@dataclass
class RunConfig:
    run_name: str = setting("default", "Folder under CHECKPOINT_DIR holding this run's stages.")
    seed: int = setting(3407, "Random seed for every stage.", ge=0, le=2**32 - 1)
    backend: Literal["hf", "unsloth"] = setting(
        "hf", "'unsloth': FastLanguageModel on a GPU; 'hf': transformers + PEFT + TRL (CPU or GPU)."
    )
    report_to: list[str] = setting(
        ["tensorboard"], "Trackers: tensorboard, wandb, trackio (none or empty: no tracker)."
    )
    resume: Literal["auto", "fresh", "anyway"] = setting(
        "auto",
        "SFT / GRPO with work already in the stage's folder. 'auto': resume the newest checkpoint when it "
        "was made with the same data, model, LoRA, seed and schedule settings (else stop, naming what "
        "differs); a finished stage does nothing. 'fresh': delete the stage's checkpoints and train from "
        "scratch. 'anyway': resume even where those settings differ.",
    )
    model: ModelConfig = setting(ModelConfig(), "Base model.")
    lora: LoraConfig = setting(LoraConfig(), "LoRA adapter.")
    sft: SFTConfig = setting(SFTConfig(), "Stage 1: supervised format teaching.")
    grpo: GRPOConfig = setting(GRPOConfig(), "Stage 2: reinforcement learning.")
    eval: EvalConfig = setting(EvalConfig(), "Held-out evaluation.")
    infer: InferConfig = setting(InferConfig(), "One-prompt inference.")
    export: ExportConfig = setting(ExportConfig(), "Adapter / merged model export.")

    @property
    def fast_rollouts(self) -> bool:
        """Whether GRPO's trainer is the fast rollout engine's (grpo.rollout_engine 'fast' applies to
        backend hf; Unsloth's trainer generates its own way). Whether it then rolls out is the
        trainer's call at run time (FastGRPOTrainer.fast_rollout_reason: vLLM, sharding, the model)."""
        return self.backend == "hf" and self.grpo.rollout_engine == "fast"

    def __post_init__(self) -> None:
        if not _RUN_NAME.fullmatch(self.run_name):
            raise ConfigError(
                f"run_name {self.run_name!r} is not one folder name; use letters, digits, '.', '_' and '-' "
                "(not starting with '.'), e.g. run_name=my-run."
            )
        for tracker in self.report_to:
            if tracker not in REPORT_TO:
                raise ConfigError(
                    f"report_to: unknown tracker {tracker!r}; valid: {', '.join(REPORT_TO)} (or an empty list [])."
                )
        g = self.grpo
        # The batch against num_generations depends on the process count: distributed.check_batch_geometry.
        if g.reward_weights is not None and len(g.reward_weights) != len(g.rewards):
            raise ConfigError(
                f"grpo.reward_weights has {len(g.reward_weights)} values for {len(g.rewards)} grpo.rewards; "
                "give one weight per reward."
            )
        from trainer.rewards import reward_names  # light: the symbolic checker loads on first use

        valid = reward_names(g.reward_set)
        for name in g.rewards:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
                hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(valid)}."
                raise ConfigError(f"grpo.rewards: unknown reward '{name}' in the {g.reward_set} set; {hint}")
        seq, prompt, completion = self.model.max_seq_length, g.max_prompt_length, g.max_completion_length
        for key, n in (("grpo.max_prompt_length", prompt), ("grpo.max_completion_length", completion)):
            if n is not None and n >= seq:
                raise ConfigError(
                    f"{key} {n} leaves no room in model.max_seq_length {seq} (prompt + completion); "
                    f"lower {key} or raise model.max_seq_length."
                )
        if prompt is not None and completion is not None and prompt + completion > seq:
            raise ConfigError(
                f"grpo.max_prompt_length {prompt} + grpo.max_completion_length {completion} = {prompt + completion} "
                f"does not fit model.max_seq_length {seq}; lower one of them or raise model.max_seq_length."
            )
        if self.model.load_in_4bit and self.backend != "unsloth":
            raise ConfigError("model.load_in_4bit needs backend: unsloth.")
        if self.model.gguf_file is not None:
            self._check_gguf()

    def _check_gguf(self) -> None:
        convert = (
            "convert the GGUF to an HF folder first (python scripts/fetch_gguf_model.py --gguf FILE --out DIR) "
            "and set model.name=DIR without model.gguf_file"
        )
        if self.backend == "unsloth":
            raise ConfigError(f"backend unsloth cannot load a GGUF (model.gguf_file); {convert}.")
        if self.grpo.use_vllm:
            raise ConfigError(f"grpo.use_vllm loads HF weights, not a GGUF (model.gguf_file); {convert}.")
        if self.model.init == "tiny":
            raise ConfigError("model.gguf_file needs model.init: pretrained (init tiny builds its own model).")
