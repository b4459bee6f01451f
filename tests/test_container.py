"""The container, for real: docker/Dockerfile built on a CPU base through compose.yaml (plus
docker/compose.cpu.yaml), then sft -> grpo -> infer, each stage in its own container, sharing the
named checkpoint volume. GRPO must start from the adapter the SFT container left there.

Needs a Docker daemon and Docker Compose v2; skipped, with the reason, where either is missing.
The CPU base is $TRAINER_CPU_BASE_IMAGE (.ci/run builds a Debian bookworm one with debootstrap),
else debian:bookworm-slim (pulled when missing). Everything runs under a unique compose project
and image tag, removed afterwards (volumes included); the base image stays.

    make test-container        (or: .venv/bin/python -m pytest -m docker)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_BASE_IMAGE = os.environ.get("TRAINER_CPU_BASE_IMAGE", "debian:bookworm-slim")
# The tiny recipe, cut to a few steps. The tiny model is built on the volume, so the SFT and GRPO
# containers share the very base model the adapter was trained on.
TINY = [
    "--config", "configs/tiny.yaml",
    "--set", "model.name=/checkpoints/models/tiny-qwen3",
    "--set", "report_to=[]",
]  # fmt: skip
RUN_DIR = "/checkpoints/tiny"  # $CHECKPOINT_DIR/<run_name of configs/tiny.yaml>
# What the image's working directory may hold: the allow-list in .dockerignore keeps the rest
# (.env, .git, .venv, checkpoints, tests) out.
APP_ENTRIES = {"configs", "data", "docker", "src", "pyproject.toml", "README.md", ".cache"}

pytestmark = [pytest.mark.docker, pytest.mark.slow]

Run = Callable[..., subprocess.CompletedProcess[str]]


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _tail(proc: subprocess.CompletedProcess[str], lines: int = 60) -> str:
    out = (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
    return "\n".join(out[-lines:])


def _docker_or_skip() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI on PATH")
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=30)
    except subprocess.TimeoutExpired:
        pytest.skip("the Docker daemon did not answer within 30 s")
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[0]
        pytest.skip(f"no Docker daemon answers: {reason}")


def _compose_or_skip() -> list[str]:
    """Compose v2: the docker CLI plugin, or a standalone binary (the `lint` extra installs one)."""
    candidates = [["docker", "compose"], [str(Path(sys.prefix) / "bin" / "docker-compose")], ["docker-compose"]]
    for cmd in candidates:
        if shutil.which(cmd[0]) is None:
            continue
        version = _run([*cmd, "version", "--short"], timeout=30)
        if version.returncode == 0 and not version.stdout.strip().lstrip("v").startswith("1."):
            return cmd
    pytest.skip("no Docker Compose v2: install the compose plugin, or `pip install -e '.[lint]'` for docker-compose")


def _base_image_or_skip() -> None:
    if _run(["docker", "image", "inspect", CPU_BASE_IMAGE], timeout=30).returncode == 0:
        return
    try:
        pull = _run(["docker", "pull", CPU_BASE_IMAGE], timeout=300)
    except subprocess.TimeoutExpired:
        pull = None
    if pull is None or pull.returncode != 0:
        pytest.skip(
            f"CPU base image {CPU_BASE_IMAGE} is not here and cannot be pulled; set TRAINER_CPU_BASE_IMAGE "
            "to a local Debian bookworm image with python3 (.ci/run builds one)"
        )


@pytest.fixture(scope="module")
def compose() -> Iterator[Run]:
    """Build the CPU image once; yield `compose(service, *args)`; remove project, volumes, image."""
    _docker_or_skip()
    cmd = _compose_or_skip()
    _base_image_or_skip()
    if shutil.which("make") is None:
        pytest.skip("no make on PATH (the test fetches torch's CPU wheel with `make cpu-wheel`)")
    # torch's CPU wheel into .whl/ (PyPI carries only the CUDA build); the image installs it.
    wheel = _run(["make", "-s", "cpu-wheel"], timeout=900)
    assert wheel.returncode == 0, f"make cpu-wheel failed:\n{_tail(wheel)}"

    name = f"trainer-test-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "TRAINER_IMAGE": f"{name}:cpu", "TRAINER_CPU_BASE_IMAGE": CPU_BASE_IMAGE}
    base = [*cmd, "-p", name, "-f", "compose.yaml", "-f", "docker/compose.cpu.yaml"]

    def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return _run([*base, *args], timeout=timeout, env=env)

    try:
        build = run("build", "sft", timeout=1800)  # every service shares this one image
        assert build.returncode == 0, f"image build failed:\n{_tail(build)}"
        yield run
    finally:
        # `docker image rm` first: unlike compose's --rmi, it also removes the build's untagged layers.
        _run(["docker", "image", "rm", f"{name}:cpu"], timeout=300)
        run("down", "--volumes", "--rmi", "all", "--remove-orphans", timeout=300)


def _stage(compose: Run, service: str, *args: str) -> str:
    proc = compose("run", "--rm", "-T", service, *TINY, *args)
    assert proc.returncode == 0, f"{service} container failed (exit {proc.returncode}):\n{_tail(proc)}"
    return proc.stdout + proc.stderr


def _read(compose: Run, path: str) -> str:
    proc = compose("run", "--rm", "-T", "--entrypoint", "cat", "sft", path)
    assert proc.returncode == 0, f"cannot read {path} from the volume:\n{_tail(proc)}"
    return proc.stdout


def test_image_runs_as_non_root_without_secrets_or_checkout(compose: Run) -> None:
    proc = compose("run", "--rm", "-T", "--entrypoint", "sh", "sft", "-c", "id -u; ls -A /app")
    assert proc.returncode == 0, _tail(proc)
    uid, *entries = proc.stdout.split()
    assert uid != "0"
    assert set(entries) <= APP_ENTRIES, f"unexpected files in /app: {sorted(set(entries) - APP_ENTRIES)}"


def test_sft_grpo_infer_share_the_volume(compose: Run) -> None:
    _stage(compose, "sft", "--set", "sft.max_steps=2")
    _stage(compose, "grpo", "--set", "grpo.max_steps=2", "--set", "grpo.max_completion_length=16")

    record = json.loads(_read(compose, f"{RUN_DIR}/grpo/run.json"))
    assert record["start_adapter"] == f"{RUN_DIR}/sft/adapter", "GRPO did not start from the SFT container's adapter"
    assert record["versions"]["torch"].endswith("+cpu")

    out = _stage(compose, "infer", "--set", "infer.max_new_tokens=16", "--prompt", "What is 2 + 3?")
    assert f"{RUN_DIR}/grpo/adapter" in out, f"infer did not use the GRPO adapter:\n{out[-2000:]}"
