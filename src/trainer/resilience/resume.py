"""What a training stage does with the work already in its folder: resume a checkpoint made with
the same settings, do nothing when it already finished, or stop before anything loads, naming the
settings that differ (`resume: auto | fresh | anyway`)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from trainer import distributed
from trainer.config import RunConfig, to_dict
from trainer.errors import UserError, override
from trainer.resilience.checkpoints import MANIFEST, last_checkpoint
from trainer.volume import find_adapter, is_adapter, sha256_file, stage_dir

log = logging.getLogger(__name__)


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


# GRPO's settings also hold the weights it started from: the SFT adapter can be trained again (with
# other data, resume=fresh) under the same path, and GRPO work made from the old one is not this run's.
START_WEIGHTS = "start_adapter_sha256"


def adapter_weights(adapter: Path) -> str:
    """An adapter's identity: the first 12 hex digits of its weights' sha256."""
    return sha256_file(adapter / "adapter_model.safetensors")[:12]


def data_key(stage: str) -> str:
    """The settings key of the stage's data file's contents (data_identity)."""
    return f"{stage}.dataset.file_sha256"


def data_identity(cfg: RunConfig, stage: str) -> dict[str, str]:
    """{data_key: first 12 hex digits of its sha256} for a stage whose dataset is a local file, else
    {}: a file edited or replaced under the same path is other data (a hub dataset is named by its
    path, name and split, in the settings already)."""
    data = Path(getattr(cfg, stage).dataset.path)
    return {data_key(stage): sha256_file(data)[:12]} if data.is_file() else {}


def stage_settings(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """What a checkpoint of `stage` records and a resume compares: `resume_settings`, the stage's
    local data file's contents (`data_identity`) and for GRPO the start adapter's
    weights (`START_WEIGHTS`) where that adapter exists. Raises UserError for a `grpo.start_from`
    folder that holds no adapter."""
    settings = {**resume_settings(to_dict(cfg), stage), **data_identity(cfg, stage)}
    if stage == "grpo" and (start := find_adapter(cfg, cfg.grpo.start_from or "sft")) is not None:
        settings[START_WEIGHTS] = adapter_weights(start)
    return settings


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
    now = stage_settings(cfg, stage)
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
        saved.update({k: record[k] for k in (START_WEIGHTS, data_key(stage)) if k in record})
        total = step
    else:
        return None
    for key in (START_WEIGHTS, data_key(stage)):
        if saved is not None and (key not in saved or key not in now):
            # Nothing to compare: made before these were recorded, or the file is gone (a finished
            # stage needs neither; the stage says so when it would train).
            saved.pop(key, None)
            now.pop(key, None)
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
