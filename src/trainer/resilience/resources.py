"""Exhausted resources as one line that says what to change: CUDA out of memory (the settings to
lower for the stage) and a full disk (ENOSPC anywhere in the exception chain, or torch's disguised
form of it), each with where the stage can resume from."""

from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

from trainer.config import RunConfig
from trainer.resilience.checkpoints import last_checkpoint
from trainer.volume import checkpoint_root, stage_dir

_MEMORY_SETTINGS = {
    "sft": "sft.per_device_train_batch_size (raise sft.gradient_accumulation_steps to keep the batch), model.max_seq_length",
    "grpo": "grpo.per_device_train_batch_size and grpo.num_generations, grpo.max_completion_length, "
    "model.max_seq_length, grpo.vllm_gpu_memory_utilization",
    "eval": "eval.batch_size, eval.max_new_tokens",
    "infer": "infer.max_new_tokens",
}


def _resume_note(cfg: RunConfig, stage: str) -> str:
    if stage not in ("sft", "grpo"):
        return ""
    last = last_checkpoint(stage_dir(cfg, stage) / "checkpoints")
    if last is None:
        return " No checkpoint of this stage was written yet."
    return f" Earlier checkpoints are intact; the same command resumes from {last}."


def out_of_memory_message(e: BaseException, cfg: RunConfig, stage: str) -> str:
    """`stage`: CUDA out of memory, the settings of that stage to lower, and where it can resume from."""
    tried = re.search(r"Tried to allocate [\d.]+ \w+", str(e))
    advice = "set lora.gradient_checkpointing=true or model.load_in_4bit=true (backend unsloth)"
    if stage in _MEMORY_SETTINGS:
        advice = f"lower {_MEMORY_SETTINGS[stage]}, or {advice}"
    return f"{stage}: CUDA out of memory{f' ({tried.group(0)})' if tried else ''}; {advice}.{_resume_note(cfg, stage)}"


def _free_mib(path: Path) -> float:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC anywhere in the exception chain. torch.save hides it ("unexpected pos N vs M" from its
    C++ stream writer), so a failed torch write with the checkpoint disk nearly empty counts too."""
    seen: list[BaseException] = []
    x: BaseException | None = e
    while x is not None and x not in seen:
        seen.append(x)
        if isinstance(x, OSError) and x.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(x):
            return True
        x = x.__cause__ or x.__context__
    torch_write = any("inline_container" in str(x) or "PytorchStreamWriter" in str(x) for x in seen)
    return torch_write and _free_mib(checkpoint_root()) < 64


def disk_full_message(e: BaseException, cfg: RunConfig, stage: str) -> str:
    """`stage`: disk full while writing (the file, else CHECKPOINT_DIR), the free space, and where it
    can resume from."""
    root = checkpoint_root()
    where = getattr(e, "filename", None) or root
    return (
        f"{stage}: disk full while writing {where} (CHECKPOINT_DIR {root} has {_free_mib(root):.0f} MiB free); "
        f"free space or point CHECKPOINT_DIR at a larger disk.{_resume_note(cfg, stage)}"
    )
