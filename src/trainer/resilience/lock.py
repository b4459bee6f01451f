"""One run at a time per run and stage: an exclusive flock on `<stage dir>/.lock`."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from trainer.errors import DiskFull, RunLocked, UserError, override
from trainer.resilience.resources import is_disk_full
from trainer.volume import checkpoint_root

LOCK = ".lock"


@contextlib.contextmanager
def run_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `folder/.lock` for the block; refuse (RunLocked) if another process
    holds it. The kernel releases it when its process dies, so a kill -9 leaves no stale lock. The
    file stays: deleting it would let two processes lock two different files of the same name."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if is_disk_full(e):
            raise DiskFull(
                f"disk full: cannot create {folder / LOCK}; free space on CHECKPOINT_DIR ({checkpoint_root()})."
            ) from None
        raise UserError(
            f"cannot write to {folder} ({e.strerror}); make CHECKPOINT_DIR ({checkpoint_root()}) writable or point it elsewhere."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            raise RunLocked(
                f"{what} is already running (process {holder}, lock {folder / LOCK}); wait for it to finish, "
                f"or start a separate run with {override('run_name=<new name>')}."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)
