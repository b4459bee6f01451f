"""The checkpoint volume: one folder per run, one per stage, written atomically.

    $CHECKPOINT_DIR/<run_name>/
        sft/adapter/            PEFT adapter + tokenizer (the final SFT result)
        sft/run.json            resolved config, package versions, git commit
        grpo/checkpoints/       periodic, resumable trainer checkpoints
        grpo/adapter/           the final GRPO adapter
        eval/report.json, eval/report.md, eval/samples.jsonl
        eval/report-limitN.*    a quick check on the first N problems (eval.limit); the full report stays
        eval/blocks/            each finished block of an evaluation (model x dataset x greedy / sampled),
                                reused by the next eval whose inputs match (blocks-limitN/ for eval.limit)

A stage writes its adapter into a temporary folder and renames it into place, so a killed stage
never leaves a half-written adapter that a later stage would load. The previous adapter is kept
as `adapter.prev` until the new one is in place.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.config import RunConfig, to_dict
from trainer.errors import UserError

log = logging.getLogger(__name__)

STAGES = ("sft", "grpo")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "vllm", "math-verify")


def checkpoint_root() -> Path:
    return Path(os.environ.get("CHECKPOINT_DIR") or "checkpoints")


def stage_dir(cfg: RunConfig, stage: str) -> Path:
    return checkpoint_root() / cfg.run_name / stage


@dataclass(frozen=True)
class EvalFiles:
    """What one `trainer eval` writes in <run>/eval/."""

    report_json: Path
    report_md: Path
    samples: Path  # every scored greedy completion, one JSON object a line
    record: Path  # the run record: config, versions, commit
    blocks: Path  # folder of finished blocks (evaluate.py), one JSON file each


def eval_files(cfg: RunConfig) -> EvalFiles:
    """Where `trainer eval` writes for this config. With eval.limit N (a quick check on the first N
    problems of each dataset) the names carry `-limitN` (report-limitN.md, ...), so that a limited
    run never overwrites a full evaluation; a dataset's own `limit` is part of the recipe and leaves
    the names alone."""
    tag = f"-limit{cfg.eval.limit}" if cfg.eval.limit else ""
    out = stage_dir(cfg, "eval")
    return EvalFiles(
        out / f"report{tag}.json",
        out / f"report{tag}.md",
        out / f"samples{tag}.jsonl",
        out / f"run{tag}.json",
        out / f"blocks{tag}",
    )


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (a sibling `.tmp` file, then a rename), making its folder:
    a reader, or a rerun after a kill, sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def sha256_file(path: Path, sync: bool = False) -> str:
    """The sha256 of a file's bytes (hex); `sync` also flushes it to disk first."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if sync:  # on disk before a manifest vouches for it (a VM that loses power, not only a kill)
            os.fsync(f.fileno())
    return h.hexdigest()


def is_adapter(path: Path) -> bool:
    return all((path / f).is_file() for f in ADAPTER_FILES)


def write_atomic(dest: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_dir)`, then move the finished folder to `dest` (keeping the old one as .prev).

    A process killed inside `write` (SIGKILL, OOM) leaves its temporary folder behind, possibly a
    merged model's gigabytes: the next write to the same `dest` removes it (one writer per `dest`)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for stale in dest.parent.glob(f".{dest.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        write(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prev = dest.with_name(dest.name + ".prev")
    if dest.exists():
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(dest, prev)
    os.replace(tmp, dest)
    shutil.rmtree(prev, ignore_errors=True)
    return dest


def save_adapter(model: Any, tokenizer: Any, dest: Path, state_dict: dict[str, Any] | None = None) -> Path:
    """Save a PEFT adapter and its tokenizer atomically. `state_dict`: the gathered weights of a
    model sharded across processes (ZeRO-3, FSDP); PEFT keeps the adapter's part of it."""

    def write(tmp: Path) -> None:
        model.save_pretrained(str(tmp), state_dict=state_dict)
        tokenizer.save_pretrained(str(tmp))

    return write_atomic(dest, write)


def find_adapter(cfg: RunConfig, which: str) -> Path | None:
    """Resolve 'sft', 'grpo', 'latest' (grpo, else sft) or a path to a complete adapter folder."""
    if which not in ("sft", "grpo", "latest"):
        path = Path(which)
        if not is_adapter(path):
            raise UserError(f"adapter '{which}' not found: expected {' and '.join(ADAPTER_FILES)} in that folder.")
        return path
    for stage in ("grpo", "sft") if which == "latest" else (which,):
        for name in ("adapter", "adapter.prev"):  # .prev survives a kill between the two renames
            path = stage_dir(cfg, stage) / name
            if is_adapter(path):
                return path
    return None


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def git_commit() -> str | None:
    """The source commit: git where the package runs from a checkout, else TRAINER_GIT_COMMIT (the image)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("TRAINER_GIT_COMMIT") or None


def write_run_record(cfg: RunConfig, stage: str, path: Path | None = None, **extra: Any) -> Path:
    """The resolved config, versions and commit, next to the stage's artifacts (`path`, by default
    <stage>/run.json). No secrets: the config holds none, and no environment variables are recorded."""
    record = {
        "stage": stage,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "git_commit": git_commit(),
        "versions": package_versions(),
        "config": to_dict(cfg),
        **extra,
    }
    path = path or stage_dir(cfg, stage) / "run.json"
    write_text(path, json.dumps(record, indent=2, default=str) + "\n")
    return path
