"""`accelerate launch` for the stages, with a single process's exit codes and stop signals.

    python -m trainer.launch --config_file configs/accelerate/ddp.yaml --num_processes 2 -m trainer grpo ...

Takes `accelerate launch`'s arguments (`make GPUS=N` and the image's entry point run it). Two things
differ from `accelerate launch` itself, whose process launcher is torchrun's:

- **Exit code.** The stage's own (README's table): a process that stops with 2 (bad input) or 143
  (SIGTERM, checkpoint saved) ends the launcher with the same code, where torchrun ends with 1 and
  a traceback whatever the processes said. A process killed by a signal gives 128 + its number.
- **SIGTERM / SIGINT** (`docker stop`, a scheduler's preemption, Ctrl-C) go on to every process
  once, and the launcher waits for them: each finishes its step and saves, as a single process
  does. torchrun's own handling kills the processes 30 s after it passes the signal on (its
  default), less than one GRPO step of a 4B model and its checkpoint may take, which then leaves no
  checkpoint. A second signal is passed on too: the processes then stop at once, without saving.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code(returncode: int) -> int:
    """A child's `returncode` as a shell reports it: negative (killed by signal N) -> 128 + N.

    >>> exit_code(143), exit_code(-9), exit_code(2)
    (143, 137, 2)
    """
    return 128 - returncode if returncode < 0 else returncode


def _pass_on(signum: int, frame: Any) -> None:
    """Send the stop signal to the launcher's children (the stage's processes, which save first)."""
    import psutil

    children = psutil.Process().children()
    if not children:  # nothing started yet, or all ended: stop the launcher as the signal would
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    name = signal.Signals(signum).name
    # os.write: no locks taken inside a signal handler (logging takes one).
    os.write(2, f"launcher: {name} passed on to {len(children)} process(es)\n".encode())
    for child in children:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass


def main(argv: list[str] | None = None) -> int:
    """Run `accelerate launch argv`; return the stage's exit code (see the module doc)."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    # torchrun (torch >= 2.9: its --signals-to-handle, read from PET_SIGNALS_TO_HANDLE, which it copies
    # to TORCHELASTIC_SIGNALS_TO_HANDLE) then leaves the stop signals to this process; older versions
    # install their own handlers over these, and end with SignalException below.
    for name in ("PET_SIGNALS_TO_HANDLE", "TORCHELASTIC_SIGNALS_TO_HANDLE"):
        os.environ.setdefault(name, "SIGHUP,SIGQUIT")
    for s in STOP_SIGNALS:
        signal.signal(s, _pass_on)
    try:
        launch_command(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = exit_code(failure.exitcode)
        log.debug("process %d ended first, with exit code %d", rank, code)
        return code
    except subprocess.CalledProcessError as e:  # one process (or a multi-node DeepSpeed launcher)
        return exit_code(e.returncode)
    except SignalException as e:
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
