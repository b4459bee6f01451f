"""`stage_guard`: what every stage runs inside. It holds the stage's run lock (the stages that
write to the volume) and turns out-of-memory and disk-full failures into one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from trainer import distributed
from trainer.config import RunConfig
from trainer.errors import DiskFull, OutOfMemory, UserError
from trainer.resilience.lock import run_lock
from trainer.resilience.resources import disk_full_message, is_disk_full, out_of_memory_message
from trainer.volume import stage_dir

LOCKED_STAGES = ("sft", "grpo", "eval", "export")  # the stages that write to the volume


@contextlib.contextmanager
def stage_guard(cfg: RunConfig, stage: str) -> Iterator[None]:
    """Run one stage: hold its run lock (stages that write to the volume), and turn out-of-memory
    and disk-full failures into one-line errors that say what to change."""
    with contextlib.ExitStack() as stack:
        if stage in LOCKED_STAGES and distributed.is_main_process():
            stack.enter_context(run_lock(stage_dir(cfg, stage), f"run '{cfg.run_name}' stage {stage}"))
        try:
            yield
        except UserError:
            raise
        except Exception as e:
            import torch

            if isinstance(e, torch.OutOfMemoryError):
                raise OutOfMemory(out_of_memory_message(e, cfg, stage)) from e
            if is_disk_full(e):
                raise DiskFull(disk_full_message(e, cfg, stage)) from e
            raise
