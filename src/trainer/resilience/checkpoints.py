"""The checkpoints on disk: `checkpoint-<step>` folders, their manifests (the commit marker), which
one to resume from, and which old ones to delete.

Transformers writes a checkpoint folder in place; `CheckpointManifest` records every file's size
and sha256 once it is complete, and only a folder whose manifest verifies counts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from trainer import distributed
from trainer.volume import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders under `output_dir`, oldest step first."""
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def write_manifest(folder: Path, step: int, settings: dict[str, Any] | None = None) -> Path:
    """Record every file of a finished checkpoint (size, sha256), atomically: the commit marker.
    `settings`: the run's settings a resume must share (`resume_settings`)."""
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p, sync=True)}
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
        if sha256_file(path) != meta["sha256"]:
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
