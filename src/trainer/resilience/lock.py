"""One run at a time per run and stage: an exclusive flock on `<stage dir>/.lock`, held while the
stage runs and removed, with the folders made for it, however the stage ends short of the process
being killed outright (kill -9, the OOM killer, the machine going down)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from trainer.errors import DiskFull, RunLocked, UserError, override
from trainer.resilience.resources import is_disk_full
from trainer.volume import checkpoint_root

LOCK = ".lock"


@contextlib.contextmanager
def run_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `folder/.lock` for the block; refuse (RunLocked) if another process
    holds it. `what` names the run and stage in that message.

    However the block ends (return, exception, Ctrl-C, SIGTERM), the lock file is deleted, and so
    are the folders made for it that are still empty: a stage that fails before writing anything
    leaves no trace. A process killed outright leaves the file behind, but the kernel drops its
    flock, so the file blocks no one and the next holder deletes it."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    path = folder / LOCK
    try:
        fd = _acquire(path, what)
    except BaseException:
        _remove_empty(created)
        raise
    released = False

    def release() -> None:
        nonlocal released
        if released:  # SIGTERM may arrive while the block's own exit is releasing
            return
        released = True
        # Deleted while still locked, so that whoever opens it next finds it gone (see _acquire).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)
        _remove_empty(created)

    try:
        with _release_on_sigterm(release, what):
            yield
    finally:
        release()


def _remove_empty(folders: list[Path]) -> None:
    """Remove each folder (deepest first) that is empty."""
    for p in folders:
        with contextlib.suppress(OSError):  # not empty: the stage wrote there, or another run did
            p.rmdir()


def _acquire(path: Path, what: str) -> int:
    """Open and flock `path`, creating it and its folder; the locked file descriptor.

    A holder deletes the file as it lets go, so between this process's open and its flock the file
    may have been deleted (and the empty folder with it): the flock then holds a file no one else
    will open, while a third process locks a new file at the same path. Only a lock on the file that
    is still at the path counts; otherwise open it again."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            continue  # the folder was removed by a holder letting go between mkdir and open
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(
                    f"disk full: cannot create {path}; free space on CHECKPOINT_DIR ({checkpoint_root()})."
                ) from None
            raise UserError(
                f"cannot write to {path.parent} ({e.strerror}); make CHECKPOINT_DIR ({checkpoint_root()}) writable "
                "or point it elsewhere."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(
                f"{what} is already running (process {holder}, lock {path}); wait for it to finish, "
                f"or start a separate run with {override('run_name=<new name>')}."
            ) from None
        try:
            at_path = os.stat(path)
        except FileNotFoundError:
            at_path = None
        held = os.fstat(fd)
        if at_path is not None and (at_path.st_dev, at_path.st_ino) == (held.st_dev, held.st_ino):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)


@contextlib.contextmanager
def _release_on_sigterm(release: Callable[[], None], what: str) -> Iterator[None]:
    """SIGTERM's default action ends the process without running `finally` blocks, which would leave
    the lock file behind. While the block runs, SIGTERM first says on stderr that `what` (the run and
    stage) stopped, calls `release`, then ends the process by SIGTERM as before (the same exit
    status: 143 in a shell).

    Only where SIGTERM has its default action: a handler already installed (or an ignored SIGTERM)
    is left as it is. Training installs its own for the block's length (stopping.StopOnSignal) and
    restores this one after the first signal, so a second SIGTERM still ends the process at once.
    Like every Python signal handler it runs between bytecodes: during a long call into C (a CUDA
    sync, a collective) the process ends when that call returns."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    # This handler runs before training, after it (the final adapter's save) and on a second SIGTERM
    # during a checkpoint's save: in each, saves are atomic, so a rerun finds whole files only.
    line = (
        f"\nSIGTERM: stopped {what} without saving; what was saved before stays whole (saves are atomic): "
        "run the same command again to go on from there\n"
    ).encode()

    def handle(signum: int, frame: object) -> None:
        os.write(2, line)  # no locks in a signal handler (print and logging take one)
        release()
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)

    signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGTERM) is handle:  # a handler the stage installed for good stays
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
