"""Several processes (GPUs, nodes) under `accelerate launch`: who writes, who waits, what must agree.

The training loop's distribution is accelerate's and TRL's (DDP, DeepSpeed ZeRO, FSDP); this module
only keeps the stages' own side effects (the volume, the run record, plots, reports) to one copy:

    accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8 -m trainer grpo ...

A single `python -m trainer` is one process: every helper here is then a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from trainer.config import RunConfig
from trainer.errors import ConfigError, UserError, override

T = TypeVar("T")
log = logging.getLogger(__name__)


def _state() -> Any:
    """accelerate's process state, set up as `TrainingArguments` sets it up, so both see one process group.

    `accelerate launch --cpu` (and the CPU test) exports ACCELERATE_USE_CPU; without it, processes on a
    machine with no GPU would each believe they run alone.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        # N copies of one run writing the same volume: stop before any of them does.
        raise UserError(
            f"launched as {launched} processes, but they did not join one process group (no GPU visible?); "
            "on CPUs set ACCELERATE_USE_CPU=true (docs/scaling.md)."
        )
    return state


def num_processes() -> int:
    return _state().num_processes


def is_main_process() -> bool:
    """True on the one process (of all nodes) that writes to the volume and logs."""
    return _state().is_main_process


def wait_for_everyone() -> None:
    _state().wait_for_everyone()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (e.g. builds a file), the others after it (and find it built)."""
    with _state().main_process_first():
        yield


def from_main_process(fn: Callable[[], T]) -> T:
    """`fn()` evaluated on the main process and handed to all, so that every process acts on the same
    answer (the checkpoint to resume from) even if the volume changes while they look."""
    state = _state()
    if state.num_processes == 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    box = [fn() if state.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def close(ok: bool) -> None:
    """End the process group, if this process joined one, before the interpreter exits.

    `ok`: the stage succeeded here, so every process reaches this point; they then meet at a barrier
    first. Without it a process that finished early (one that writes nothing) exits while the main
    process still saves, and its collective backend's threads can die mid-teardown: seen on CPU
    (gloo) as "terminate called without an active exception" and exit -6 after a successful run.
    On failure there is no barrier (the others may never come); the launcher ends them.
    """
    import sys

    if "torch" not in sys.modules:  # nothing was loaded, so no group was joined (--help, a config error)
        return
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    if ok:
        dist.barrier()
    dist.destroy_process_group()


def sharding() -> str | None:
    """What `accelerate launch` was told to shard the training with: "FSDP", "DeepSpeed ZeRO-<stage>",
    or None (one process, DDP). Read from the launcher's environment, so known before anything loads."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"DeepSpeed ZeRO-{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    return None


def device_map() -> dict[str, int] | None:
    """Where `from_pretrained` puts the base model: this process's own GPU (one process, DDP, ZeRO-1/2),
    or None where there is no GPU or the trainer shards the model itself (ZeRO-3, FSDP: accelerate
    places the shards; a device_map would load a whole copy per GPU first, or clash with FSDP's loading)."""
    import torch

    if not torch.cuda.is_available() or sharding() in ("FSDP", "DeepSpeed ZeRO-3"):
        return None
    return {"": _state().local_process_index}


def check_rollout_engine(cfg: RunConfig) -> None:
    """Fail before any model loads where GRPO's fast rollout engine would meet FSDP or DeepSpeed.

    The engine decodes with every weight of the model, read in place on this process's GPU, and lays
    the frozen ones out anew (trainer.rollout.layout); FSDP holds them as shards of each GPU, and
    DeepSpeed owns their storage. Under DDP each process holds the whole model, as on one GPU."""
    engine = sharding()
    if engine is None or cfg.grpo.use_vllm or not cfg.fast_rollouts:
        return
    raise ConfigError(
        f"grpo.rollout_engine: fast runs under DDP only (it reads the whole model on every GPU), and this launch "
        f"uses {engine}; launch with configs/accelerate/ddp.yaml where the model fits one GPU, or keep {engine} "
        f"with TRL's generate: {override('grpo.rollout_engine=trl')}."
    )


def one_gpu_per_process(gpu_count: Callable[[], int] | None = None) -> str | None:
    """A stage started as one process on a machine with several GPUs trains on one of them.

    transformers' Trainer wraps the model in torch.nn.DataParallel when a single process sees several
    GPUs; TRL's GRPO and the fast rollout engine do not work under it (seen on two H200s: a crash in
    DataParallel's scatter at the first loss), and DDP is the faster way to use them for SFT too.
    So, unless this process belongs to a launch of several, only the first visible GPU stays visible:
    set here, before CUDA starts, so every library sees the one. Returns the line it logged, or None.
    gpu_count: how many GPUs CUDA would show (default torch.cuda.device_count, which asks NVML and
    leaves CUDA uninitialized)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return None
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        ids = [i.strip() for i in listed.split(",") if i.strip()]
        count, first = len(ids), ids[0] if ids else ""
    else:
        if gpu_count is None:
            import torch

            gpu_count = torch.cuda.device_count
        count, first = gpu_count(), "0"
    if count < 2:
        return None
    os.environ["CUDA_VISIBLE_DEVICES"] = first
    line = (
        f"{count} GPUs visible to one process: this run uses one (CUDA_VISIBLE_DEVICES={first}); "
        f"to train on all {count}, run with GPUS={count} (make) or under accelerate launch (docs/scaling.md)"
    )
    log.info(line)
    return line


def log_level() -> int:
    """INFO on the main process, WARNING on the others: each line once, not once per GPU.

    Read from the launcher's RANK (torchrun, accelerate launch) because logging is set up before the
    process group exists."""
    return logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING


def check_batch_geometry(cfg: RunConfig, processes: int) -> None:
    """Fail before any model loads when GRPO's batch cannot hold whole prompt groups on `processes`.

    TRL generates `per_device_train_batch_size * processes * steps_per_generation` completions per
    generation round (steps_per_generation defaults to gradient_accumulation_steps), and splits them
    into groups of num_generations completions of one prompt; a remainder would be a broken group.
    """
    g = cfg.grpo  # num_generations >= 2 (GRPO compares completions of one prompt): the config's range
    rounds = processes * g.gradient_accumulation_steps
    batch = g.per_device_train_batch_size * rounds
    if batch % g.num_generations == 0:
        return
    step = g.num_generations // math.gcd(g.num_generations, rounds)
    valid = step * math.ceil(g.per_device_train_batch_size / step)
    raise ConfigError(
        f"grpo.per_device_train_batch_size ({g.per_device_train_batch_size}) x {processes} process(es) x "
        f"grpo.gradient_accumulation_steps ({g.gradient_accumulation_steps}) = {batch} completions per generation "
        f"round, not a multiple of grpo.num_generations ({g.num_generations}), so TRL cannot form whole prompt "
        f"groups; set grpo.per_device_train_batch_size={valid} (or change grpo.num_generations or the process count)."
    )
