"""The container's entry point, run as a script on this machine (no Docker): what it refuses, and
that it refuses with the bad-input exit code 2 and a message naming the fix."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[1] / "docker/entrypoint.sh"


def fake_nvidia_smi(bin_dir: Path, output: str, rc: int = 0) -> None:
    tool = bin_dir / "nvidia-smi"
    tool.write_text(f"#!/bin/sh\nprintf '%s\\n' '{output}'\nexit {rc}\n")
    tool.chmod(0o755)


@pytest.mark.parametrize(
    ("stage", "smi", "env", "message"),
    [
        ("sft", None, {}, "error: no GPU visible in the container (nvidia-smi is missing"),
        ("grpo", ("NVIDIA H100 80GB HBM3, 535.104.05", 0), {}, "error: the NVIDIA driver 535.104.05 is too old"),
        (
            "eval",
            ("Failed to initialize NVML: Driver/library version mismatch", 9),
            {},
            "nvidia-smi is present but failed",
        ),
        ("infer", ("", 0), {}, "error: nvidia-smi lists no GPU"),  # driver mounted, no device passed in
        ("sft", None, {"TRAINER_REQUIRE_GPU": "0", "CHECKPOINT_DIR": "/proc/no-such-dir"}, "is not writable by uid"),
        ("train", None, {}, "error: unknown stage 'train'"),
    ],
)
def test_refusals_exit_2(tmp_path: Path, stage: str, smi: tuple[str, int] | None, env: dict, message: str) -> None:
    # A PATH of its own: the tools the script calls, and nvidia-smi only when the case fakes one
    # (a GPU host's real one must not answer).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("mkdir", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if smi is not None:
        fake_nvidia_smi(bin_dir, *smi)
    environ = {"PATH": str(bin_dir), "HOME": str(tmp_path), "CHECKPOINT_DIR": str(tmp_path / "ckpt"), **env}
    res = subprocess.run(
        [shutil.which("bash"), str(ENTRYPOINT), stage], env=environ, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stderr
    assert message in res.stderr
