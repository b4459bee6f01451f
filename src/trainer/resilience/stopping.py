"""Stopping training without losing it: the trainer callbacks for a signal (finish the step, save
a checkpoint, exit 128 + the signal number) and for non-finite loss or gradients (stop before the
bad step is saved)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer.distributed import sharding
from trainer.errors import Interrupted, NonFinite
from trainer.resilience.checkpoints import last_checkpoint

log = logging.getLogger(__name__)


class StopOnSignal(TrainerCallback):
    """SIGTERM / SIGINT during training: finish the current step, save a checkpoint, stop.

    The handler only records the signal; the callback acts at the next step end. After the first
    signal the previous handler is back, so a second one stops at once (without saving).
    Evaluation uses the handler alone (`installed`, `signum`), checked after each block, with its own
    `notice`: the line shown on the first signal, `{name}` the signal's name."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(
        self, notice: str = "finishing this step and saving a checkpoint; {name} again stops without saving"
    ) -> None:
        self.notice = notice
        self.signum: int | None = None
        self.stopped = False
        self._previous: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not on the main thread: SIGTERM / SIGINT will not save a checkpoint")
            yield
            return
        for s in self.SIGNALS:  # _previous filled before each handler can run
            self._previous[s] = signal.getsignal(s)
            signal.signal(s, self._handle)
        try:
            yield
        finally:
            for s, handler in self._previous.items():
                signal.signal(s, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum
        signal.signal(signum, self._previous[signum])
        name = signal.Signals(signum).name
        # os.write: no locks taken inside a signal handler (logging takes one).
        os.write(2, f"\n{name}: {self.notice.format(name=name)}\n".encode())

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        requested = self.signum is not None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            # Processes must stop at the same step, or the others hang in the next collective.
            import torch

            flag = torch.tensor([float(requested)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            requested = bool(flag.item())
        if requested:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def raise_if_stopped(self, state: Any, output_dir: Path, stage: str) -> None:
        """After trainer.train(): an early stop by signal ends the stage (no final adapter)."""
        if not self.stopped or state.global_step >= state.max_steps:
            return
        signum = self.signum or signal.SIGTERM
        raise Interrupted(
            f"{stage} stopped by {signal.Signals(signum).name} after step {state.global_step}/{state.max_steps}; "
            f"checkpoint saved in {output_dir / f'checkpoint-{state.global_step}'}. "
            "Run the same command again to resume from it.",
            signum,
        )


def _local(grad: Any) -> Any:
    """This process's part of a gradient: FSDP2 holds each as a DTensor, which has no .tolist()."""
    to_local = getattr(grad, "to_local", None)
    return to_local() if callable(to_local) else grad


def _collective_device() -> Any:
    """Where a process with no gradient of its own puts its count for the all-reduce (NCCL: its GPU)."""
    import torch

    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class NonFiniteGuard(TrainerCallback):
    """Stops training when gradients (before the optimizer step) or the logged loss are not finite,
    by raising before transformers saves the step, so the last checkpoint on disk stays a good one."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        # fp16 runs use a GradScaler, which expects overflowing gradients now and then and skips those steps.
        if model is None or args.fp16:
            return
        import torch

        grads = [(name, _local(p.grad)) for name, p in model.named_parameters() if p.grad is not None]
        bad: list[str] = []
        if grads:
            finite = torch.stack([torch.isfinite(g).all() for _, g in grads]).tolist()  # one device sync
            bad = [name for (name, _), ok in zip(grads, finite, strict=True) if not ok]
        # FSDP and DeepSpeed leave each process a shard of each gradient (or none): every process must
        # reach the same verdict, or one stops while the others wait for it in the next collective.
        # Decided from the launch, not from the gradients, so all processes take part or none does.
        bad_anywhere = len(bad)
        if sharding() is not None and torch.distributed.is_initialized():
            count = torch.tensor([len(bad)], device=grads[0][1].device if grads else _collective_device())
            torch.distributed.all_reduce(count)
            bad_anywhere = int(count.item())
        if bad_anywhere:
            # How many tells a diverged run (all) from one op's overflow (those below it). Backward runs
            # from the output down, so the last bad tensor in model order is nearest where it began.
            where = (
                f"{len(bad)} of {len(grads)} trained tensors, the last {bad[-1].removeprefix('base_model.model.')}"
                if bad
                else "in another process's shard"
            )
            self._stop("gradients", state.global_step + 1, args, where)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key in ("loss",) if args.fp16 else ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                self._stop(f"{key} ({value})", state.global_step, args)

    def _stop(self, what: str, step: int, args: Any, where: str = "") -> None:
        last = last_checkpoint(Path(args.output_dir))
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        where = f" ({where})" if where else ""
        raise NonFinite(
            f"{self.stage}: non-finite {what} at step {step}{where}; stopped without saving it ({kept}). "
            f"Lower {self.stage}.learning_rate or check the data, then run again."
        )
