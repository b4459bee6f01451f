"""Export: the LoRA adapter + tokenizer, a merged 16-bit model, and optionally a push to the Hub.

python -m trainer export --config configs/qwen3-4b.yaml --set export.push=true export.hub_repo=me/model
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from trainer import backend
from trainer.config import RunConfig
from trainer.errors import UserError
from trainer.volume import find_adapter, stage_dir, write_atomic, write_run_record

log = logging.getLogger(__name__)


def main(cfg: RunConfig) -> dict[str, str]:
    x = cfg.export
    token = os.environ.get("HF_TOKEN")
    if x.push and not token:
        raise UserError("export.push needs HF_TOKEN; put it in .env (see .env.example) or the environment.")
    if x.push and not x.hub_repo:
        raise UserError("export.push needs export.hub_repo, e.g. --set export.hub_repo=me/qwen3-4b-math.")
    adapter = find_adapter(cfg, x.adapter)
    if adapter is None:
        raise UserError(f"no {x.adapter} adapter to export under {stage_dir(cfg, 'sft').parent}; train one first.")
    out = stage_dir(cfg, "export")
    written = {
        "adapter": str(write_atomic(out / "adapter", lambda tmp: shutil.copytree(adapter, tmp, dirs_exist_ok=True)))
    }
    if x.merged:
        written["merged"] = str(write_atomic(out / "merged", lambda tmp: _save_merged(cfg, adapter, tmp)))
    if x.push:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(x.hub_repo, private=x.private, exist_ok=True)
        folder = Path(written.get("merged", written["adapter"]))
        api.upload_folder(repo_id=x.hub_repo, folder_path=str(folder), commit_message="trainer export")
        written["hub"] = f"https://huggingface.co/{x.hub_repo}"
    write_run_record(cfg, "export", source_adapter=str(adapter), written=written)
    for kind, where in written.items():
        print(f"{kind}: {where}")
    return written


def _save_merged(cfg: RunConfig, adapter: Path, dest: Path) -> None:
    import torch

    if cfg.backend == "unsloth":
        from trainer import unsloth_backend

        # Unsloth's merge also dequantizes a 4-bit (QLoRA) base to 16 bit first.
        unsloth_backend.save_merged(cfg, adapter, dest)
        return
    model, tokenizer = backend.inference_model(cfg, {"export": adapter})
    merged = model.merge_and_unload()
    # 16 bit: bfloat16 keeps the range of the float32 training weights.
    merged.to(torch.bfloat16).save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
