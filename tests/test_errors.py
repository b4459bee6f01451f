"""Bad input and exhausted resources, through the CLI: one line naming the input and the fix, a
distinct exit code, and the earlier work on the volume exactly as it was."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import load_config
from trainer.errors import RunLocked, UserError
from trainer.resilience.checkpoints import MANIFEST, checkpoints, verify_checkpoint
from trainer.resilience.guard import stage_guard
from trainer.resilience.lock import LOCK, run_lock
from trainer.tiny import check_tiny_path

ROOT = Path(__file__).resolve().parents[1]


def run(stage: str, overrides: list[str], config: str = "configs/tiny.yaml") -> int:
    return main([stage, "--config", config, *[a for o in overrides for a in ("--set", o)]])


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (lock files aside: they only ever hold a pid)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != LOCK
    }


def error_line(err: str) -> str:
    """The CLI's message: one line after 'error: ' (progress bars may precede it on stderr)."""
    assert "error: " in err, err[-2000:]
    line = err.rsplit("error: ", 1)[1]
    assert line.count("\n") == 1 and line.endswith("\n"), line
    return line


@pytest.fixture(scope="module")
def trained(sft_volume: Path) -> Path:
    """A volume holding earlier work: a real one-step SFT run (adapter, checkpoint, run record)."""
    return sft_volume


@pytest.fixture
def vol(trained: Path, volume: Path) -> Path:
    shutil.copytree(trained, volume)
    return volume


@pytest.fixture
def base(tiny_model_dir: Path) -> list[str]:
    return [
        f"model.name={tiny_model_dir}",
        "report_to=[]",
        "grpo.max_completion_length=8",
        "grpo.log_completions=false",
    ]


def bad_jsonl(tmp: Path) -> str:
    path = tmp / "problems.jsonl"
    path.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?", "answer": "4"}\n{"prompt": "3+3?", "answ\n')
    return f"grpo.dataset.path={path}"


def short_sequences(tmp: Path) -> str:
    """The tiny recipe with sequences too short for any SFT row, as a run of its own (a changed
    max_seq_length would not resume this volume's SFT checkpoint)."""
    path = tmp / "short.yaml"
    text = (Path("configs/tiny.yaml")).read_text().replace("run_name: tiny", "run_name: short")
    path.write_text(text.replace("max_seq_length: 512", "max_seq_length: 60"))
    return str(path)


def bad_yaml(tmp: Path) -> str:
    path = tmp / "recipe.yaml"
    path.write_text("run_name: tiny\ngrpo:\n  max_steps: [1, 2\n")
    return str(path)


# (stage, overrides given a tmp dir, config given a tmp dir, exit code, what the line must say)
CASES = {
    "malformed jsonl line": ("grpo", bad_jsonl, None, 2, ["problems.jsonl:3: malformed row", "on_bad_row: skip"]),
    "missing column": (
        "grpo",
        lambda t: "grpo.dataset.columns={answer: result}",
        None,
        2,
        ["column 'result' (for answer) not found", "Map it with columns:"],
    ),
    "empty after a filter": (
        "sft",
        None,
        short_sequences,
        2,
        ["no rows left after the filter 'length <= max_seq_length/2'"],
    ),
    "bad yaml": ("grpo", None, bad_yaml, 2, ["recipe.yaml:", "is not valid YAML"]),
    "unknown key": ("grpo", lambda t: "grpo.learnig_rate=1e-5", None, 2, ["did you mean 'grpo.learning_rate'?"]),
    "wrong type": ("grpo", lambda t: "grpo.max_steps=ten", None, 2, ["'grpo.max_steps' must be an integer, got 'ten'"]),
    "keep no checkpoint": (
        "grpo",
        lambda t: "grpo.keep_checkpoints=0",
        None,
        2,
        ["'grpo.keep_checkpoints' must be at least 1, got 0"],
    ),
    "negative lora rank": ("sft", lambda t: "lora.r=-1", None, 2, ["'lora.r' must be at least 1, got -1"]),
    "negative learning rate": (
        "sft",
        lambda t: "sft.learning_rate=-1",
        None,
        2,
        ["'sft.learning_rate' must be above 0"],
    ),
    "lengths that cannot fit": (
        "grpo",
        lambda t: "grpo.max_prompt_length=510",
        None,
        2,
        ["grpo.max_prompt_length 510 + grpo.max_completion_length 8 = 518 does not fit model.max_seq_length 512"],
    ),
    "prompts longer than max_prompt_length": (
        "grpo",
        lambda t: "grpo.max_prompt_length=16",
        None,
        2,
        ["no rows left after the filter 'prompt length <= 16 tokens'"],
    ),
    "grpo without sft adapter": ("grpo", lambda t: "run_name=fresh", None, 2, ["none was found", "make sft"]),
    "push without HF_TOKEN": ("export", lambda t: "export.push=true", None, 2, ["export.push needs HF_TOKEN"]),
    "unsloth without gpu": ("sft", lambda t: "backend=unsloth", None, 2, ["backend: unsloth needs", "backend=hf"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_the_volume_alone(
    case: str, vol: Path, base: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    stage, override, config, code, needles = CASES[case]
    monkeypatch.delenv("HF_TOKEN", raising=False)
    before = snapshot(vol)
    capsys.readouterr()
    overrides = [*base, override(tmp_path)] if override else base
    assert run(stage, overrides, config(tmp_path) if config else "configs/tiny.yaml") == code
    line = error_line(capsys.readouterr().err)
    assert all(n in line for n in needles), line
    assert snapshot(vol) == before


def test_out_of_gpu_memory_names_the_settings_to_lower(
    vol: Path, base: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import torch
    import trl

    def oom(*args, **kwargs):
        # What torch raises when a CUDA allocation fails; this machine has no GPU to exhaust.
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 79 GiB"
        )

    monkeypatch.setattr(trl.GRPOTrainer, "training_step", oom)
    before = snapshot(vol)
    capsys.readouterr()
    assert run("grpo", [*base, "grpo.max_steps=2"]) == 5
    line = error_line(capsys.readouterr().err)
    assert line.startswith(
        "grpo: CUDA out of memory (Tried to allocate 2.50 GiB); lower grpo.per_device_train_batch_size"
    )
    for key in (
        "grpo.num_generations",
        "grpo.max_completion_length",
        "model.max_seq_length",
        "lora.gradient_checkpointing",
        "model.load_in_4bit",
    ):
        assert key in line
    assert snapshot(vol) == before


def test_non_finite_gradients_stop_and_keep_the_last_good_checkpoint(vol: Path, base: list[str], capsys) -> None:
    before = snapshot(vol)
    capsys.readouterr()
    # Adam moves every weight by about the learning rate: 1e30 overflows the next forward pass.
    args = [
        *base,
        "run_name=diverge",
        "sft.learning_rate=1e30",
        "sft.warmup_steps=0",
        "sft.max_steps=4",
        "sft.save_steps=1",
    ]
    assert run("sft", args) == 4
    ckpts = vol / "diverge/sft/checkpoints"
    assert error_line(capsys.readouterr().err) == (
        "sft: non-finite gradients at step 2 (56 of 56 trained tensors, the last "
        "model.layers.3.mlp.down_proj.lora_B.default.weight); stopped without saving it (the last good checkpoint is "
        f"{ckpts / 'checkpoint-1'}). Lower sft.learning_rate or check the data, then run again.\n"
    )
    assert [p.name for p in checkpoints(ckpts)] == ["checkpoint-1"]
    assert verify_checkpoint(ckpts / "checkpoint-1") is None
    assert not (vol / "diverge/sft/adapter").exists()
    assert {k: v for k, v in snapshot(vol).items() if k in before} == before


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, b"4242 on gpu-box-1")
print("locked", flush=True)
time.sleep(600)
"""


def test_second_run_of_a_stage_refuses_while_the_first_holds_it(vol: Path, base: list[str], capsys) -> None:
    lock = vol / "tiny/grpo" / LOCK
    lock.parent.mkdir(parents=True)
    # Another process holding the run's lock, as a running `trainer grpo` does.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = snapshot(vol)
        capsys.readouterr()
        assert run("grpo", base) == 3
        line = error_line(capsys.readouterr().err)
        assert line.startswith("run 'tiny' stage grpo is already running (process 4242 on gpu-box-1")
        assert "--set run_name=" in line
        assert snapshot(vol) == before and lock.read_text() == "4242 on gpu-box-1"
    finally:
        holder.kill()  # as kill -9 would: the kernel drops its lock
        holder.wait()
    # The stale lock file does not block: this run gets past the lock to its own (bad) dataset.
    assert run("grpo", [*base, "grpo.dataset.path=missing.jsonl"]) == 2
    assert "dataset file 'missing.jsonl' not found" in error_line(capsys.readouterr().err)


def tree(root: Path) -> set[str]:
    """Every file and folder under `root`, lock files included."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# (recipe, model.name under tmp, what the line must say besides "'<name>' is not a folder here")
MISSING_MODELS = {
    "any missing folder": ("configs/tiny.yaml", "nope", "point model.name at a model folder"),
    "a folder under models/": ("configs/tiny.yaml", "models/q", "run `make real-model` first"),
    "the real-model recipe": ("configs/qwen2.5-0.5b-gsm8k.yaml", "q", "run `make real-model` first"),
}


@pytest.mark.parametrize("case", MISSING_MODELS)
def test_a_missing_model_folder_is_named_before_anything_loads(case: str, volume: Path, tmp_path: Path, capsys) -> None:
    recipe, name, hint = MISSING_MODELS[case]
    missing = tmp_path / name
    assert run("sft", [f"model.name={missing}", "model.init=pretrained"], recipe) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"model.name '{missing}' is not a folder here (a hub id has the form org/name)"), line
    assert hint in line, line
    assert not volume.exists()


# Where model.init tiny cannot build its model: (model.name given the volume and a tmp dir, what the line says).
TAKEN_TINY_PATHS = {
    # The stage's lock makes the run's folder before the model is built: caught at the build.
    "the run's folder": (lambda vol, tmp: vol / "tiny", "a folder holding sft and no model (no config.json)"),
    "an unrelated folder": (lambda vol, tmp: tmp / "notes", "a folder holding a.txt and no model (no config.json)"),
    "a file": (lambda vol, tmp: tmp / "notes" / "a.txt", "a file, not a folder"),
}


@pytest.mark.parametrize("case", TAKEN_TINY_PATHS)
def test_a_tiny_model_path_taken_by_something_else_is_named(case: str, volume: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine\n")
    place, what = TAKEN_TINY_PATHS[case]
    path = place(volume, tmp_path)
    assert run("sft", [f"model.name={path}", "report_to=[]"]) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"model.name '{path}' is where model.init tiny builds the tiny model, but it is {what}")
    assert "model.name=.cache/tiny-qwen3" in line, line
    assert not volume.exists() and (tmp_path / "notes" / "a.txt").read_text() == "mine\n"


def test_the_tiny_model_may_be_built_where_nothing_is_or_in_an_empty_folder(tmp_path: Path) -> None:
    check_tiny_path(tmp_path / "new")
    check_tiny_path(tmp_path)  # empty: the build's rename replaces it


def test_a_stage_that_fails_before_training_leaves_no_lock_behind(
    vol: Path, base: list[str], tmp_path: Path, capsys
) -> None:
    before = tree(vol)
    capsys.readouterr()
    assert run("grpo", [*base, f"model.name={tmp_path / 'missing'}", "model.init=pretrained"]) == 2
    assert "is not a folder here" in error_line(capsys.readouterr().err)
    # No tiny/grpo/.lock, nor the tiny/grpo folder made to hold it; the earlier SFT work untouched.
    assert tree(vol) == before


# How a stage can end after its lock is taken and before it writes anything: the exception raised in it.
ENDINGS = {
    "bad input": UserError("model.name: no such model"),
    "a bug": RuntimeError("a bug"),
    "Ctrl-C": KeyboardInterrupt(),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_every_early_ending_of_a_stage_removes_its_lock(ending: str, volume: Path) -> None:
    with pytest.raises(type(ENDINGS[ending])):
        with stage_guard(load_config("configs/tiny.yaml"), "sft"):
            assert (volume / "tiny/sft" / LOCK).is_file()
            raise ENDINGS[ending]
    assert not volume.exists()  # the folders made for the lock went with it


IN_STAGE = """
import time
from trainer.config import load_config
from trainer.resilience.guard import stage_guard
with stage_guard(load_config("configs/tiny.yaml"), "sft"):
    print("in the stage", flush=True)
    time.sleep(600)
"""


def test_sigterm_before_training_removes_the_lock_and_still_ends_by_the_signal(volume: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "CHECKPOINT_DIR": str(volume)}
    proc = subprocess.Popen(
        [sys.executable, "-c", IN_STAGE], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline() == "in the stage\n"
        assert (volume / "tiny/sft" / LOCK).is_file()
        proc.send_signal(signal.SIGTERM)
        # Ended by SIGTERM itself, as without the lock (a shell reports 143), not by an exit code.
        assert proc.wait(timeout=60) == -signal.SIGTERM
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert "SIGTERM: stopped run 'tiny' stage sft without saving;" in err, err
    assert err.rstrip().endswith("run the same command again to go on from there"), err
    assert not volume.exists()


def test_the_lock_admits_one_holder_at_a_time_while_holders_delete_it(tmp_path: Path) -> None:
    # Each holder deletes the lock file (and its empty folders) as it lets go, while others are
    # opening it: none may lock a file that is no longer the one at the path. Threads contend as
    # processes would: an flock belongs to an open file, not to a process.
    folder, inside = tmp_path / "run" / "stage", tmp_path / "inside"
    held: list[int] = []
    failed: list[BaseException] = []

    def contend() -> None:
        n = 0
        try:
            for _ in range(1000):
                with contextlib.suppress(RunLocked), run_lock(folder, "the test run"):
                    os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))  # FileExistsError: two holders
                    os.unlink(inside)
                    n += 1
        except BaseException as e:
            failed.append(e)
        held.append(n)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch between any two system calls, where the races are
    try:
        threads = [threading.Thread(target=contend) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failed, failed
    assert all(n > 0 for n in held), held  # each held it in turn, not only refused


@pytest.fixture
def small_disk(tmp_path: Path) -> Path:
    """A 16 MiB tmpfs: a disk that really fills. Needs permission to mount (root in the container)."""
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_during_a_checkpoint_names_the_volume_and_keeps_the_earlier_one(
    small_disk: Path, trained: Path, base: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    vol = small_disk / "checkpoints"
    shutil.copytree(trained / "tiny/sft/adapter", vol / "tiny/sft/adapter")
    monkeypatch.setenv("CHECKPOINT_DIR", str(vol))
    # Room for one checkpoint (sized like SFT's, same LoRA) and a half: the second one hits the wall.
    one = sum(p.stat().st_size for p in (trained / "tiny/sft/checkpoints/checkpoint-1").iterdir())
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - int(1.5 * one)))
    before = snapshot(vol)
    capsys.readouterr()
    assert run("grpo", [*base, "grpo.max_steps=3", "grpo.save_steps=1"]) == 6
    ckpts = vol / "tiny/grpo/checkpoints"
    line = error_line(capsys.readouterr().err)
    assert line.startswith("grpo: disk full while writing ") and f"(CHECKPOINT_DIR {vol} has " in line
    assert line.endswith(f"Earlier checkpoints are intact; the same command resumes from {ckpts / 'checkpoint-1'}.\n")
    assert verify_checkpoint(ckpts / "checkpoint-1") is None
    assert not (ckpts / "checkpoint-2" / MANIFEST).exists()
    assert {k: v for k, v in snapshot(vol).items() if k in before} == before


def test_exit_code_reaches_the_shell() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "trainer", "grpo", "--config", "configs/tiny.yaml", "--set", "grpo.max_steps=ten"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2
    assert res.stderr == "error: config key 'grpo.max_steps' must be an integer, got 'ten'.\n"


def test_half_precision_on_cpu_is_a_clear_error(volume: Path, tiny_model_dir: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert run("sft", [f"model.name={tiny_model_dir}", "model.dtype=bfloat16"]) == 2
    assert error_line(capsys.readouterr().err).startswith("model.dtype: bfloat16 trains on a GPU only")
    assert not list(volume.rglob("adapter*"))
