"""Never lose a run: a tiny GRPO run killed (SIGKILL, SIGTERM) or left with a corrupt checkpoint
resumes, through the CLI, to the same final step with the same adapter."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors import safe_open

from trainer.cli import main
from trainer.errors import NonFinite
from trainer.resilience.checkpoints import (
    MANIFEST,
    checkpoints,
    last_checkpoint,
    rotate,
    verify_checkpoint,
    write_manifest,
)
from trainer.resilience.stopping import NonFiniteGuard
from trainer.volume import write_atomic

ROOT = Path(__file__).resolve().parents[1]
# One prompt of 4 completions of 8 tokens per step: a step takes about a second on a CPU core.
FAST = [
    "grpo.per_device_train_batch_size=4",
    "grpo.max_completion_length=8",
    "grpo.log_completions=false",
    "report_to=[]",
]


def sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def run(stage: str, overrides: list[str]) -> int:
    return main([stage, "--config", "configs/tiny.yaml", *sets(overrides)])


@pytest.fixture(scope="module")
def sft_adapter(sft_volume: Path) -> Path:
    """A real one-step SFT adapter for GRPO to start from."""
    return sft_volume / "tiny/sft/adapter"


@pytest.fixture
def grpo_args(tiny_model_dir: Path, sft_adapter: Path) -> list[str]:
    return [f"model.name={tiny_model_dir}", f"grpo.start_from={sft_adapter}", *FAST]


def start(volume: Path, overrides: list[str], log: Path) -> subprocess.Popen:
    """`python -m trainer grpo` in its own process, as a user (or a container) runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CHECKPOINT_DIR": str(volume)}
    cmd = [sys.executable, "-m", "trainer", "grpo", "--config", "configs/tiny.yaml", *sets(overrides)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    wait_until(path.exists, f"{path} to appear", proc, log, timeout)


def wait_until(done: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"waited in vain for {what} (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def final_step(volume: Path) -> int:
    return json.loads((volume / "tiny/grpo/run.json").read_text())["global_step"]


@pytest.mark.slow
def test_sigkill_after_first_checkpoint_resumes_to_the_same_end(
    volume: Path, grpo_args: list[str], sft_adapter: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Enough steps that the kill lands mid-run: a tiny step takes well under 0.1 s on an idle machine.
    args = [*grpo_args, "grpo.max_steps=30", "grpo.save_steps=1"]
    ckpts = volume / "tiny/grpo/checkpoints"
    log = tmp_path / "grpo.log"
    proc = start(volume, args, log)
    wait_for(ckpts / "checkpoint-1" / MANIFEST, proc, log)
    proc.kill()  # SIGKILL: possibly in the middle of writing the next checkpoint
    assert proc.wait() == -signal.SIGKILL
    assert not (volume / "tiny/grpo/adapter").exists()
    resume = last_checkpoint(ckpts)
    assert resume is not None

    with caplog.at_level(logging.INFO):
        assert run("grpo", args) == 0
    assert f"resuming from {resume}" in caplog.text
    assert final_step(volume) == 30
    assert shapes(volume / "tiny/grpo/adapter") == shapes(sft_adapter)
    # The resumed run carried the trainer state over: its history starts at step 1, not at the resume step.
    state = json.loads((ckpts / "checkpoint-30/trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == list(range(1, 31))
    # keep_checkpoints (default 2): the two newest remain, both verified.
    assert [p.name for p in checkpoints(ckpts)] == ["checkpoint-29", "checkpoint-30"]
    assert all(verify_checkpoint(p) is None for p in checkpoints(ckpts))


@pytest.mark.slow
def test_sigterm_mid_step_saves_that_step_exits_143_and_resumes(
    volume: Path, grpo_args: list[str], sft_adapter: Path, tmp_path: Path
) -> None:
    # save_steps above max_steps: any checkpoint is the signal's. Enough steps that the signal lands
    # mid-run (a tiny step takes well under 0.1 s on an idle machine); it is sent once step 2 is logged.
    args = [*grpo_args, "grpo.max_steps=30", "grpo.save_steps=100"]
    ckpts = volume / "tiny/grpo/checkpoints"
    log = tmp_path / "grpo.log"
    proc = start(volume, args, log)
    wait_until(lambda: "step 2/30" in log.read_text(), "step 2 in the log", proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()[-3000:]

    last = log.read_text().rsplit("error: ", 1)[1]
    stopped = re.fullmatch(
        rf"grpo stopped by SIGTERM after step (\d+)/30; checkpoint saved in {re.escape(str(ckpts))}/checkpoint-\1\. "
        r"Run the same command again to resume from it\.\n",
        last,
    )
    assert stopped, last
    step = int(stopped[1])
    assert 2 <= step < 30
    # The step the signal interrupted was finished and saved, completely; nothing else was.
    assert [p.name for p in checkpoints(ckpts)] == [f"checkpoint-{step}"]
    assert verify_checkpoint(ckpts / f"checkpoint-{step}") is None
    assert not (volume / "tiny/grpo/adapter").exists()

    assert run("grpo", args) == 0
    assert final_step(volume) == 30
    assert shapes(volume / "tiny/grpo/adapter") == shapes(sft_adapter)


@pytest.mark.slow
def test_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(
    volume: Path, grpo_args: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    args = [*grpo_args, "grpo.max_steps=2", "grpo.save_steps=1"]
    ckpts = volume / "tiny/grpo/checkpoints"
    assert run("grpo", args) == 0
    weights = ckpts / "checkpoint-2/adapter_model.safetensors"
    size = weights.stat().st_size
    with weights.open("r+b") as f:  # a write cut short (full disk, killed VM)
        f.truncate(size // 2)
    # The run died there: no adapter (a finished stage would have nothing to do).
    shutil.rmtree(volume / "tiny/grpo/adapter")

    with caplog.at_level(logging.INFO):
        assert run("grpo", args) == 0
    assert (
        f"skipping checkpoint {ckpts / 'checkpoint-2'}: adapter_model.safetensors has {size // 2} bytes" in caplog.text
    )
    assert f"resuming from {ckpts / 'checkpoint-1'}" in caplog.text
    assert final_step(volume) == 2
    # Step 2 was trained again and its checkpoint written whole.
    assert verify_checkpoint(ckpts / "checkpoint-2") is None and weights.stat().st_size == size


def fake_checkpoint(root: Path, step: int, manifest: bool = True) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "optimizer.pt").write_bytes(bytes(range(256)) * step)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    if manifest:
        write_manifest(folder, step)
    return folder


def test_verify_names_what_is_wrong(tmp_path: Path) -> None:
    good = fake_checkpoint(tmp_path, 1)
    assert verify_checkpoint(good) is None
    assert verify_checkpoint(fake_checkpoint(tmp_path, 2, manifest=False)) == "no manifest (its save did not finish)"
    flipped = fake_checkpoint(tmp_path, 3)
    data = bytearray((flipped / "optimizer.pt").read_bytes())
    data[7] ^= 1  # same size, one bit off
    (flipped / "optimizer.pt").write_bytes(bytes(data))
    assert verify_checkpoint(flipped) == "optimizer.pt does not match its sha256"
    (fake_checkpoint(tmp_path, 4) / "trainer_state.json").unlink()
    assert verify_checkpoint(tmp_path / "checkpoint-4") == "trainer_state.json is missing"
    renamed = tmp_path / "checkpoint-5"
    good.rename(renamed)
    assert verify_checkpoint(renamed) == "the manifest is for step 1"
    assert last_checkpoint(tmp_path) is None and last_checkpoint(tmp_path / "absent") is None


def test_rotate_keeps_the_newest_verified_and_never_a_newer_one(tmp_path: Path) -> None:
    for step in (1, 2):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 3, manifest=False)  # cut short by a kill
    newest = fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 5, manifest=False)  # being written by the next save
    rotate(tmp_path, newest, keep=2)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-5"]
    rotate(tmp_path, newest, keep=1)
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-5"]
    assert last_checkpoint(tmp_path) == newest


def test_write_atomic_removes_what_a_killed_write_left(tmp_path: Path) -> None:
    """A write killed mid-way leaves `.adapter.tmp-*`; the next write of the same folder removes it,
    and leaves another destination's temporary folder alone."""
    dest = tmp_path / "adapter"
    stale = tmp_path / ".adapter.tmp-killed"
    other = tmp_path / ".merged.tmp-live"
    for d in (stale, other):
        d.mkdir()
        (d / "part.bin").write_bytes(b"x" * 10)
    write_atomic(dest, lambda tmp: (tmp / "adapter_config.json").write_text("{}"))
    assert (dest / "adapter_config.json").read_text() == "{}"
    assert not stale.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".merged.tmp-live", "adapter"]


# --------------------------------------------------------------------------------------------
# A resume must match the config that made the checkpoint; a finished stage stays finished


def error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture
def sft_args(tiny_model_dir: Path) -> list[str]:
    return [f"model.name={tiny_model_dir}", "report_to=[]", "sft.max_steps=2", "sft.save_steps=1"]


def sft_state(volume: Path) -> tuple[int, list[str], float]:
    """(run.json's global_step, checkpoint folders, the adapter's mtime)."""
    adapter = volume / "tiny/sft/adapter/adapter_model.safetensors"
    ckpts = [p.name for p in checkpoints(volume / "tiny/sft/checkpoints")]
    return json.loads((volume / "tiny/sft/run.json").read_text())["global_step"], ckpts, adapter.stat().st_mtime


@pytest.mark.slow
def test_sft_resume_refuses_other_settings_and_a_finished_stage_changes_nothing(
    volume: Path, sft_args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture, caplog
) -> None:
    assert run("sft", sft_args) == 0
    finished = sft_state(volume)
    assert finished[:2] == (2, ["checkpoint-1", "checkpoint-2"])

    # The same command again: says so, writes nothing.
    with caplog.at_level(logging.WARNING):
        assert run("sft", sft_args) == 0
    assert "sft already finished (step 2 of 2" in caplog.text and "resume=fresh" in caplog.text
    assert sft_state(volume) == finished

    other = tmp_path / "other.jsonl"
    other.write_text((ROOT / "src/trainer/sample_data/sft.jsonl").read_text().split("\n", 1)[1])
    capsys.readouterr()
    assert run("sft", [*sft_args, f"sft.dataset.path={other}", "sft.learning_rate=0.001"]) == 2
    line = error_line(capsys)
    assert line.startswith("error: sft: the checkpoint ") and "was made with other settings" in line
    assert (
        "sft.dataset.path 'src/trainer/sample_data/sft.jsonl' -> " in line
        and "sft.learning_rate 0.005 -> 0.001" in line
    )
    assert "resume=fresh" in line and "resume=anyway" in line
    assert run("sft", [*sft_args, "lora.r=8"]) == 2
    assert "lora.r 16 -> 8" in error_line(capsys)

    assert run("sft", [*sft_args, "sft.max_steps=1"]) == 2
    assert error_line(capsys).startswith("error: sft.max_steps 1 is below step 2")
    assert sft_state(volume) == finished

    # Asked to: resume with other settings up to a larger max_steps, then start over.
    assert run("sft", [*sft_args, "sft.learning_rate=0.001", "sft.max_steps=3", "resume=anyway"]) == 0
    assert sft_state(volume)[:2] == (3, ["checkpoint-2", "checkpoint-3"])
    assert run("sft", [*sft_args, "resume=fresh"]) == 0
    assert sft_state(volume)[:2] == (2, ["checkpoint-1", "checkpoint-2"])


@pytest.mark.slow
def test_sft_resumed_mid_epoch_logs_no_accelerate_noise(volume: Path, sft_args: list[str], caplog) -> None:
    """Resumed mid-epoch, the Trainer skips the epoch's first batches by index (accelerate's
    skip_first_batches: nothing re-read or re-tokenized). At that epoch's end accelerate logged "The
    used dataset had no length ... drop the remainder yourself" once per gathered metric: no fault,
    but read as one (a slow resume was blamed on it)."""
    args = [*sft_args, "sft.dataset.limit=24"]  # 3 batches of 8 an epoch: step 3 ends the resumed epoch
    assert run("sft", args) == 0
    with caplog.at_level(logging.INFO):
        assert run("sft", [*args, "sft.max_steps=4"]) == 0
    assert f"resuming from {volume / 'tiny/sft/checkpoints/checkpoint-2'}" in caplog.text
    assert sft_state(volume)[0] == 4 and "had no length" not in caplog.text


@pytest.mark.slow
def test_grpo_rerun_of_a_finished_stage_changes_nothing(
    volume: Path, grpo_args: list[str], capsys: pytest.CaptureFixture
) -> None:
    args = [*grpo_args, "grpo.max_steps=2", "grpo.save_steps=1"]
    assert run("grpo", args) == 0
    adapter = volume / "tiny/grpo/adapter/adapter_model.safetensors"
    mtime = adapter.stat().st_mtime
    assert run("grpo", args) == 0
    assert [p.name for p in checkpoints(volume / "tiny/grpo/checkpoints")] == ["checkpoint-1", "checkpoint-2"]
    assert adapter.stat().st_mtime == mtime and final_step(volume) == 2
    capsys.readouterr()
    assert run("grpo", [*args, "grpo.max_steps=1"]) == 2
    assert error_line(capsys).startswith("error: grpo.max_steps 1 is below step 2")
    assert run("grpo", [*args, "grpo.temperature=0.5"]) == 2
    assert "grpo.temperature 1.0 -> 0.5" in error_line(capsys)


@pytest.mark.slow
def test_grpo_made_from_another_sft_adapter_is_not_resumed(
    volume: Path, tiny_model_dir: Path, sft_adapter: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """SFT trained again (other data, resume=fresh) writes its adapter to the same path: GRPO work
    made from the old one is refused by name, whether its checkpoint or only its record is left."""
    from safetensors.torch import load_file, save_file

    start = shutil.copytree(sft_adapter, tmp_path / "sft-adapter")
    args = [f"model.name={tiny_model_dir}", f"grpo.start_from={start}", *FAST, "grpo.max_steps=1", "grpo.save_steps=1"]
    assert run("grpo", args) == 0
    weights = start / "adapter_model.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(weights).items()}, weights)
    capsys.readouterr()
    for more in ([], ["grpo.max_steps=2"]):  # finished, or to go on
        assert run("grpo", [*args, *more]) == 2
        line = error_line(capsys)
        assert "was made with other settings (start_adapter_sha256 '" in line and "resume=fresh" in line
    shutil.rmtree(volume / "tiny/grpo/checkpoints")
    assert run("grpo", args) == 2
    assert error_line(capsys).startswith(f"error: grpo: the finished run in {volume / 'tiny/grpo'} was made with other")
    assert run("grpo", [*args, "resume=fresh"]) == 0


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_a_data_file_changed_under_the_same_path_is_other_data(stage: str, volume: Path, tmp_path: Path) -> None:
    """The stage's data file edited in place (same path, one row fewer): its checkpoint, or the
    finished run's record, was made from other rows, so the rerun is refused naming the file's
    contents, before anything loads; the unchanged file resumes (or is finished)."""
    from trainer.config import load_config
    from trainer.errors import UserError
    from trainer.resilience.resume import check_resume, data_identity, stage_settings
    from trainer.volume import write_run_record

    data = tmp_path / "data.jsonl"
    shutil.copy(ROOT / f"src/trainer/sample_data/{stage}.jsonl", data)
    cfg = load_config(ROOT / "configs/tiny.yaml", [f"{stage}.dataset.path={data}", f"{stage}.max_steps=2"])
    out, before = volume / f"tiny/{stage}", stage_settings(cfg, stage)
    (out / "adapter").mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (out / "adapter" / name).write_text("{}")
    write_run_record(cfg, stage, global_step=2, **data_identity(cfg, stage))  # as training.finish writes it
    assert check_resume(cfg, stage) == out / "adapter"  # the same file: finished
    write_manifest(fake_checkpoint(out / "checkpoints", 1, manifest=False), 1, before)
    (out / "run.json").unlink()
    assert check_resume(cfg, stage) is None  # the same file: resumes checkpoint-1

    data.write_text(data.read_text().split("\n", 1)[1])
    with pytest.raises(UserError) as err:
        check_resume(cfg, stage)
    assert (
        f"the checkpoint {out / 'checkpoints/checkpoint-1'} was made with other settings ({stage}.dataset.file_sha256 '"
        in str(err.value)
    )
    shutil.rmtree(out / "checkpoints")
    write_run_record(cfg, stage, global_step=2, **{k: before[k] for k in before if k.endswith("file_sha256")})
    with pytest.raises(UserError) as err:
        check_resume(cfg, stage)
    assert f"the finished run in {out} was made with other settings ({stage}.dataset.file_sha256 '" in str(err.value)
    assert "resume=fresh" in str(err.value)


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ([], None),
        (["2.weight"], "(1 of 4 trained tensors, the last 2.weight)"),
        (["2.bias", "0.weight"], "(2 of 4 trained tensors, the last 2.bias)"),
    ],
)
def test_non_finite_guard_names_the_tensors(tmp_path: Path, bad: list[str], where: str | None) -> None:
    import torch

    # Layers 0 and 2 hold 4 trained tensors; those in `bad` get a NaN in their gradient.
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    for name, p in model.named_parameters():
        p.grad = torch.zeros_like(p)
        if name in bad:
            p.grad.view(-1)[0] = float("nan")
    args = SimpleNamespace(fp16=False, output_dir=str(tmp_path))
    guard = NonFiniteGuard("sft")
    if where is None:
        guard.on_pre_optimizer_step(args, SimpleNamespace(global_step=6), None, model=model)
        return
    with pytest.raises(NonFinite) as e:
        guard.on_pre_optimizer_step(args, SimpleNamespace(global_step=6), None, model=model)
    assert str(e.value).startswith(f"sft: non-finite gradients at step 7 {where}; stopped without saving it")


@pytest.mark.parametrize("nan", [False, True], ids=["finite", "nan"])
def test_non_finite_guard_reads_fsdp2_sharded_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nan: bool
) -> None:
    """Under FSDP2 every parameter and gradient is a DTensor (a shard per process), on which the check's
    .tolist() raised at the first optimizer step (seen on two H200s). A one-process gloo group with a
    one-device mesh stands in for the GPUs: the guard reads the local shards and agrees across processes."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        model = torch.nn.Linear(4, 2)
        for name, p in list(model.named_parameters()):
            sharded = torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)]))
            grad = torch.zeros_like(p)
            if nan and name == "weight":
                grad[0, 0] = float("nan")
            sharded.grad = distribute_tensor(grad, mesh, [Shard(0)])
            setattr(model, name, sharded)
        assert isinstance(model.weight.grad, DTensor)
        args = SimpleNamespace(fp16=False, output_dir=str(tmp_path))
        call = lambda: NonFiniteGuard("grpo").on_pre_optimizer_step(  # noqa: E731
            args, SimpleNamespace(global_step=1), None, model=model
        )
        if not nan:
            call()
            return
        with pytest.raises(
            NonFinite, match=r"^grpo: non-finite gradients at step 2 \(1 of 2 trained tensors, the last weight\)"
        ):
            call()
    finally:
        dist.destroy_process_group()
