"""Never lose a run: preemption, crashes, resume, concurrent runs and exhausted resources.

- A checkpoint counts only once its manifest (`manifest.json`: step, and each file's size and
  sha256) is written, after transformers has finished the folder. The manifest is the commit
  marker: a folder without a valid one (a kill or a full disk mid-save, a truncated file) is
  skipped with a warning and the previous checkpoint is used, so a kill -9 at any moment costs at
  most the steps since the last checkpoint.
- SIGTERM / SIGINT (spot preemption, `docker stop`, Ctrl-C) finish the current step, save a
  checkpoint and exit with 128 + the signal number; the same command resumes.
- Non-finite gradients or loss stop the run before the bad state is saved.
- One process at a time per run and stage (an flock on `<stage dir>/.lock`).
- Out of GPU memory and a full disk end as one line that says what to change.

Longer than the other modules (about 530 lines): six small sections, one per failure above, that
share the exit-code exceptions and the stage guard; none is over about 120 lines.

Exit codes: 2 bad input, 3 the run is already running, 4 non-finite loss/gradients, 5 out of GPU
memory, 6 disk full, 130 / 143 stopped by SIGINT / SIGTERM with a checkpoint saved.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer import distributed
from trainer.config import RunConfig, to_dict
from trainer.errors import UserError, override
from trainer.volume import checkpoint_root, is_adapter, stage_dir

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
LOCKED_STAGES = ("sft", "grpo", "eval", "export")  # the stages that write to the volume
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


# The CLI prints any UserError as one line and exits with its exit_code; these are the resilience ones.
class RunLocked(UserError):
    exit_code = 3


class NonFinite(UserError):
    exit_code = 4


class OutOfMemory(UserError):
    exit_code = 5


class DiskFull(UserError):
    exit_code = 6


class Interrupted(UserError):
    """Stopped by a signal after saving a checkpoint; exit code 128 + signal number, as a shell reports it."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


# ---------------------------------------------------------------------------------------------
# Checkpoint manifests


def checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders under `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def _sha256(path: Path, sync: bool = False) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if sync:  # on disk before the manifest vouches for it (a VM that loses power, not only a kill)
            os.fsync(f.fileno())
    return h.hexdigest()


def write_manifest(folder: Path, step: int, settings: dict[str, Any] | None = None) -> Path:
    """Record every file of a finished checkpoint (size, sha256), atomically: the commit marker.
    `settings`: the run's settings a resume must share (`resume_settings`)."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p, sync=True)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}")
    }
    path = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp"
    with tmp.open("w") as f:
        json.dump({"step": step, "files": files, "settings": settings}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def verify_checkpoint(folder: Path) -> str | None:
    """None when the checkpoint is complete and intact, else the reason it is not."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        step = manifest["step"]
    except FileNotFoundError:
        return "no manifest (its save did not finish)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest ({type(e).__name__}: {e})"
    m = _CHECKPOINT.match(folder.name)
    if not m or int(m.group(1)) != step:
        return f"the manifest is for step {step}"
    for name, meta in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != meta["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {meta['size']}"
        if _sha256(path) != meta["sha256"]:
            return f"{name} does not match its sha256"
    return None


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint that passes verification; newer ones that fail are skipped with a warning."""
    for folder in reversed(checkpoints(output_dir)):
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        log.warning("skipping checkpoint %s: %s; trying the previous one", folder, problem)
    return None


def remove_newer(output_dir: Path, resume: Path | None) -> None:
    """Delete the (unverified) checkpoints newer than the one training resumes from: training redoes
    those steps and would otherwise write into a folder still holding a broken file."""
    step = int(_CHECKPOINT.match(resume.name).group(1)) if resume else -1
    for folder in checkpoints(output_dir):
        if int(_CHECKPOINT.match(folder.name).group(1)) > step:
            log.warning("removing the incomplete checkpoint %s", folder)
            shutil.rmtree(folder)


def rotate(output_dir: Path, newest: Path, keep: int) -> None:
    """Keep the `keep` newest checkpoints with a manifest up to `newest`; delete older ones. Runs only
    after `newest` is verified, so a crash never leaves fewer than one good checkpoint."""
    newest_step = int(_CHECKPOINT.match(newest.name).group(1))
    kept = 0
    for folder in reversed(checkpoints(output_dir)):
        if int(_CHECKPOINT.match(folder.name).group(1)) > newest_step:
            continue
        if kept < keep and (folder / MANIFEST).is_file():
            kept += 1
            continue
        shutil.rmtree(folder, ignore_errors=True)


class CheckpointManifest(TrainerCallback):
    """Writes the manifest of each checkpoint transformers saves, then rotates old ones.

    Transformers writes `checkpoint-N` in place (not atomically) and calls `on_save` once it is
    complete; transformers' own rotation (save_total_limit) is off, because it may delete the
    previous checkpoint before this one is verified."""

    def __init__(self, keep: int, settings: dict[str, Any] | None = None) -> None:
        self.keep = keep
        self.settings = settings

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        distributed.wait_for_everyone()  # every process has written its own RNG state file
        if distributed.is_main_process():
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            write_manifest(folder, state.global_step, self.settings)
            rotate(Path(args.output_dir), folder, self.keep)


# ---------------------------------------------------------------------------------------------
# Resume only what this config would have made


# Stage settings that may change between a run and its resume: how far it goes, how often it saves
# and logs, and how rollouts are computed; everything else in model, lora, seed and the stage must match.
_MAY_CHANGE = {
    "max_steps",
    "save_steps",
    "logging_steps",
    "keep_checkpoints",
    "log_completions",
    "log_completions_steps",
    "use_vllm",
    "vllm_mode",
    "vllm_gpu_memory_utilization",
    "vllm_server_host",
    "vllm_server_port",
    "rollout_engine",
}


def resume_settings(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The settings (dotted key -> value) of a resolved config (`to_dict`) that a checkpoint of
    `stage` depends on: the data, model, LoRA, seed and the stage's schedule."""
    flat: dict[str, Any] = {"seed": config.get("seed")}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and not prefix.endswith(".columns"):
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
        elif prefix.rsplit(".", 1)[-1] not in _MAY_CHANGE or not prefix.startswith(f"{stage}."):
            flat[prefix] = node

    for section in ("model", "lora", stage):
        walk(section, config.get(section, {}))
    return flat


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def check_resume(cfg: RunConfig, stage: str) -> Path | None:
    """Decide, before anything loads, what a training stage does with the work already in its folder.

    Returns the adapter when the stage already finished under these settings (nothing to do); None
    when it should train (from scratch, or resuming its newest checkpoint). Raises UserError when
    the checkpoint (or the finished run) was made with other settings (unless `resume: anyway`),
    or when `<stage>.max_steps` is below its step. `resume: fresh` deletes the stage's checkpoints
    and trains from scratch."""
    out = stage_dir(cfg, stage)
    ckpts = out / "checkpoints"
    if cfg.resume == "fresh":
        if ckpts.exists() and distributed.is_main_process():
            log.warning("resume: fresh: deleting the checkpoints in %s and training %s from scratch", ckpts, stage)
            shutil.rmtree(ckpts)
        return None
    now = resume_settings(to_dict(cfg), stage)
    record = _read_json(out / "run.json") if is_adapter(out / "adapter") else None
    last = last_checkpoint(ckpts)
    manifest = _read_json(last / MANIFEST) if last else None
    state = _read_json(last / "trainer_state.json") if last else None
    if manifest is not None:
        what, saved, step = f"the checkpoint {last}", manifest.get("settings"), manifest["step"]
        total = (state or {}).get("max_steps", step)
    elif record is not None:
        what, saved, step = (
            f"the finished run in {out}",
            resume_settings(record["config"], stage),
            record["global_step"],
        )
        total = step
    else:
        return None
    if saved is None:
        log.warning("%s records no settings (an older version made it); resuming without comparing them", what)
    elif (
        differ := sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k))
    ) and cfg.resume != "anyway":
        changes = "; ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise UserError(
            f"{stage}: {what} was made with other settings ({changes}{more}); {override('resume=fresh')} starts "
            f"this stage over (deleting its checkpoints), {override('run_name=<new name>')} starts a separate "
            f"run, {override('resume=anyway')} resumes with the new settings."
        )
    max_steps = getattr(cfg, stage).max_steps
    target = max_steps if max_steps > 0 else total
    done = record["global_step"] if record is not None else step
    if max(step, done) > target:
        raise UserError(
            f"{stage}.max_steps {target} is below step {max(step, done)}, which {what} already reached; set "
            f"{stage}.max_steps={max(step, done)} or more to go on, or {override('resume=fresh')} to start over."
        )
    if record is not None and done == target:
        log.warning(
            "%s already finished (step %d of %d; adapter %s); nothing to do. %s trains it again, "
            "a larger %s.max_steps goes on from the last checkpoint.",
            stage,
            done,
            target,
            out / "adapter",
            override("resume=fresh"),
            stage,
        )
        return out / "adapter"
    if step == target:
        raise UserError(
            f"{stage}: {what} is at the last step ({step}) but no adapter was written from it; set a larger "
            f"{stage}.max_steps to go on, or {override('resume=fresh')} to start over."
        )
    return None


# ---------------------------------------------------------------------------------------------
# SIGTERM / SIGINT


class StopOnSignal(TrainerCallback):
    """SIGTERM / SIGINT during training: finish the current step, save a checkpoint, stop.

    The handler only records the signal; the callback acts at the next step end. After the first
    signal the previous handler is back, so a second one stops at once (without saving)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
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
        os.write(
            2, f"\n{name}: finishing this step and saving a checkpoint; {name} again stops without saving\n".encode()
        )

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


# ---------------------------------------------------------------------------------------------
# Non-finite loss / gradients


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

        grads = [(name, p.grad) for name, p in model.named_parameters() if p.grad is not None]
        if not grads:
            return
        finite = torch.stack([torch.isfinite(g).all() for _, g in grads]).tolist()  # one device sync
        bad = [name for (name, _), ok in zip(grads, finite, strict=True) if not ok]
        if bad:
            # How many tells a diverged run (all) from one op's overflow (those below it). Backward runs
            # from the output down, so the last bad tensor in model order is nearest where it began.
            where = f"{len(bad)} of {len(grads)} trained tensors, the last {bad[-1].removeprefix('base_model.model.')}"
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


# ---------------------------------------------------------------------------------------------
# One run at a time


@contextlib.contextmanager
def run_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on `folder/.lock` for the block; refuse (RunLocked) if another process
    holds it. The kernel releases it when its process dies, so a kill -9 leaves no stale lock. The
    file stays: deleting it would let two processes lock two different files of the same name."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        if _is_disk_full(e):
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


# ---------------------------------------------------------------------------------------------
# The stage around it all: lock, and exhausted resources as one line


_MEMORY_SETTINGS = {
    "sft": "sft.per_device_train_batch_size (raise sft.gradient_accumulation_steps to keep the batch), model.max_seq_length",
    "grpo": "grpo.per_device_train_batch_size and grpo.num_generations, grpo.max_completion_length, "
    "model.max_seq_length, grpo.vllm_gpu_memory_utilization",
    "eval": "eval.batch_size, eval.max_new_tokens",
    "infer": "infer.max_new_tokens",
}


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
                raise OutOfMemory(_out_of_memory_message(e, cfg, stage)) from e
            if _is_disk_full(e):
                raise DiskFull(_disk_full_message(e, cfg, stage)) from e
            raise


def _resume_note(cfg: RunConfig, stage: str) -> str:
    if stage not in ("sft", "grpo"):
        return ""
    last = last_checkpoint(stage_dir(cfg, stage) / "checkpoints")
    if last is None:
        return " No checkpoint of this stage was written yet."
    return f" Earlier checkpoints are intact; the same command resumes from {last}."


def _out_of_memory_message(e: BaseException, cfg: RunConfig, stage: str) -> str:
    tried = re.search(r"Tried to allocate [\d.]+ \w+", str(e))
    advice = "set lora.gradient_checkpointing=true or model.load_in_4bit=true (backend unsloth)"
    if stage in _MEMORY_SETTINGS:
        advice = f"lower {_MEMORY_SETTINGS[stage]}, or {advice}"
    return f"{stage}: CUDA out of memory{f' ({tried.group(0)})' if tried else ''}; {advice}.{_resume_note(cfg, stage)}"


def _free_mib(path: Path) -> float:
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


def _is_disk_full(e: BaseException) -> bool:
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


def _disk_full_message(e: BaseException, cfg: RunConfig, stage: str) -> str:
    root = checkpoint_root()
    where = getattr(e, "filename", None) or root
    return (
        f"{stage}: disk full while writing {where} (CHECKPOINT_DIR {root} has {_free_mib(root):.0f} MiB free); "
        f"free space or point CHECKPOINT_DIR at a larger disk.{_resume_note(cfg, stage)}"
    )
