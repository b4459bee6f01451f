"""GRPO and SFT speed on the reference workload, side by side: plain TRL, Unsloth's defaults, the product.

    make bench                                   # every variant, one GPU (results: docs/benchmarks.md)
    python benchmarks/bench_grpo.py --only grpo-product,grpo-unsloth --steps 3
    python benchmarks/bench_grpo.py --only grpo-trl-vllm,grpo-unsloth-vllm --lanes 2   # vLLM rows, 2 GPUs
    python benchmarks/bench_grpo.py rollout      # the decode loop alone, with a kernel-time profile

The workload: a Qwen3-4B-shaped model with random weights (hidden 2560, 36 layers, 32 heads, 8 KV
heads, head_dim 128, intermediate 9728, vocab 151936, tied embeddings; built from Qwen3Config, no
hub), bf16, LoRA r 32 / alpha 64 on all seven projections, gradient checkpointing; GRPO: 4 prompts
x 8 generations per step, prompts of 128 tokens, completions of 512 (random weights never stop
early, so the work is fixed), the recipe's sampling (temperature 1.0, min_p 0.1); SFT: batches of
8 x 1024 tokens. Prompts and the tokenizer are synthetic (one word per token id).

Each variant runs in its own process (memory and library patches isolated; Unsloth patches TRL on
import), one at a time per GPU: `--lanes N` runs N variants at once, each alone on its own GPU.
A step is timed from one optimizer step's end to the next with the GPU synchronised;
the figure is the median after warm-up steps. Rollout time is TRL's `_generate` (tokenise, sample,
decode; with TRL's vLLM also the push of the merged weights into vLLM); training is the rest of
the step. The vLLM rows run vLLM colocated in the training process with BENCH_VLLM_SHARE (0.3) of
the GPU's memory, which it takes whole at start (weights, then KV cache): their peak memory is that
share, not what the work needs. "GPU GiB" is the device's own count (every allocator, vLLM's too)
at step ends, less what was in use when the variant started. Floors come from this GPU's measured
copy bandwidth and bf16 matmul rate: a decode step must read every weight once, a training step
must do the matmul FLOPs of forward + recompute (gradient checkpointing) + backward.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from qwen3_4b_shape import QWEN3_4B  # this folder (the script's own) is on sys.path

ROOT = Path(__file__).resolve().parent.parent
SHAPE = dict(QWEN3_4B)
SMOKE = bool(os.environ.get("BENCH_SMOKE"))
if SMOKE:  # a toy shape, to check this script on a CPU (no figures)
    SHAPE |= dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=128,
        vocab_size=2048,
    )
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS, GENERATIONS, PROMPT_LEN, COMPLETION_LEN = 4, 8, 128, 512
SFT_BATCH, SFT_LEN = 8, 1024
EOS_ID, PAD_ID = 151643, 151654  # Qwen3's <|endoftext|>, and the pad unsloth/Qwen3-4B-Base declares
if SMOKE:
    PROMPT_LEN, COMPLETION_LEN, SFT_LEN, EOS_ID, PAD_ID = 8, 8, 32, 2000, 2001
VARIANTS = ["grpo-product", "grpo-unsloth", "grpo-trl", "sft-trl", "sft-unsloth", "grpo-trl-vllm", "grpo-unsloth-vllm"]
# Seconds a variant needs to finish (start included: vLLM's engine start was about 1-2 minutes).
MIN_SECONDS = {
    "grpo-product": 60,
    "grpo-unsloth": 150,
    "grpo-trl": 90,
    "sft-trl": 40,
    "sft-unsloth": 80,
    "grpo-trl-vllm": 120,
    "grpo-unsloth-vllm": 200,
}
DEFAULT_STEPS = {  # (warm-up, timed) steps: plain TRL takes about a minute a step, so it gets one
    "grpo-product": (2, 3),
    "grpo-unsloth": (1, 2),
    "grpo-trl": (0, 1),
    "sft-trl": (2, 3),
    "sft-unsloth": (2, 3),
    "grpo-trl-vllm": (1, 2),
    "grpo-unsloth-vllm": (1, 2),
}
VLLM_SHARE = float(os.environ.get("BENCH_VLLM_SHARE", "0.3"))  # colocated vLLM's share of GPU memory
DEVICE_MAP = None if SMOKE else {"": 0}
DTYPE = "float32" if SMOKE else "bfloat16"
LABELS = {
    "grpo-trl": "TRL GRPOTrainer + PEFT (transformers generate)",
    "grpo-unsloth": "Unsloth defaults (no vLLM)",
    "grpo-product": "product: backend hf, rollout_engine fast",
    "grpo-trl-vllm": f"TRL GRPOTrainer + PEFT, vLLM colocate ({VLLM_SHARE:.2f} of GPU memory)",
    "grpo-unsloth-vllm": f"Unsloth defaults + vLLM (fast_inference, {VLLM_SHARE:.2f} of GPU memory)",
    "sft-trl": "TRL SFTTrainer + PEFT",
    "sft-unsloth": "Unsloth defaults",
}


# ---------------------------------------------------------------------------------------------
# The model and data


def build_model(out: Path) -> None:
    """The random Qwen3-4B-shaped model and a one-word-per-id tokenizer, saved like a hub model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

    if (out / "config.json").is_file():
        return
    torch.manual_seed(3407)
    config = Qwen3Config(**SHAPE, eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=None)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen3ForCausalLM(config).to(getattr(torch, DTYPE))
    with torch.no_grad():
        # A zero EOS row (the embedding is tied) gives EOS logit 0, far below the top logits of 151936
        # random ones, so min_p drops it: every completion runs its full 512 tokens in every variant.
        model.get_input_embeddings().weight[EOS_ID].zero_()
    vocab = {f"w{i}": i for i in range(SHAPE["vocab_size"])}
    vocab["<|endoftext|>"] = vocab.pop(f"w{EOS_ID}")
    vocab["<|vision_pad|>"] = vocab.pop(f"w{PAD_ID}")
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|vision_pad|>")
    model.save_pretrained(out)
    fast.save_pretrained(out)


def words(rng: Any, n: int) -> str:
    return " ".join(f"w{i}" for i in rng.integers(0, EOS_ID - 16, n))


def grpo_dataset(steps: int) -> Any:
    import datasets
    import numpy as np

    rng = np.random.default_rng(0)
    return datasets.Dataset.from_list([{"prompt": words(rng, PROMPT_LEN)} for _ in range(steps * PROMPTS)])


def reward_len(completions: list[str], **_: Any) -> list[float]:
    """Cheap and varied, so that advantages (and the loss) are not zero."""
    return [float(len(c) % 13) for c in completions]


def grpo_args(out: str, steps: int, **extra: Any) -> Any:
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=out,
        per_device_train_batch_size=PROMPTS * GENERATIONS,
        gradient_accumulation_steps=1,
        num_generations=GENERATIONS,
        max_completion_length=COMPLETION_LEN,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        min_p=0.1,
        learning_rate=5e-6,
        beta=0.0,
        loss_type="dapo",
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=not SMOKE,
        use_cpu=SMOKE,
        seed=3407,
        optim="adamw_torch",
        log_completions=False,
        shuffle_dataset=False,
        **extra,
    )


# ---------------------------------------------------------------------------------------------
# Timing


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak(kind: str) -> float:
    import torch

    if not torch.cuda.is_available():
        return 0.0
    return getattr(torch.cuda, f"max_memory_{kind}")() / 2**30


def device_used() -> int:
    """Bytes in use on this process's GPU by every allocator and process (0 without CUDA): torch's
    counters miss memory that vLLM maps itself (sleep mode) and CUDA's own context."""
    import torch

    if not torch.cuda.is_available():
        return 0
    free, total = torch.cuda.mem_get_info()
    return total - free


def print_profile(prof: Any, rows: int) -> None:
    """The kernels (and ops) that took the most device time, compactly."""
    events = sorted(prof.key_averages(), key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events)
    print(f"profile: {total / 1e3:.1f} ms of device time", flush=True)
    for e in events[:rows]:
        print(f"{e.self_device_time_total / 1e3:9.2f} ms {e.count:7d}  {e.key[:100]}", flush=True)


def profile_replays(graph: Any, what: str, reps: int) -> None:
    """Kernel time of `reps` replays of a CUDA graph, by kernel, and how much of the span was idle."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            graph.replay()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    start = min(e.time_range.start for e in kernels)
    end = max(e.time_range.end for e in kernels)
    busy = sum(e.time_range.end - e.time_range.start for e in kernels)
    print(
        f"{what}: {(end - start) / reps / 1e3:.3f} ms per step, kernels busy {busy / reps / 1e3:.3f} ms, "
        f"{len(kernels) // reps} kernels per step",
        flush=True,
    )
    by_name: dict[str, list[float]] = {}
    for e in kernels:
        by_name.setdefault(e.name, []).append(e.time_range.end - e.time_range.start)
    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))
    for name, ts in rows[:30]:
        print(
            f"{sum(ts) / reps / 1e3:8.3f} ms {len(ts) // reps:5d} x {sum(ts) / len(ts):6.1f} us  {name[:110]}",
            flush=True,
        )


class Timer:
    """Step end times (GPU synchronised), the time spent in TRL's `_generate`, and the GPU memory in
    use at step ends beyond `device_base` (device_used() when the variant started)."""

    def __init__(self, device_base: int = 0) -> None:
        import torch
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, *a: Any, **k: Any) -> None:
                sync()
                timer.ends.append(time.perf_counter())

            def on_step_begin(self, args: Any, state: Any, *a: Any, **k: Any) -> None:
                if timer.profile_step is not None and state.global_step == timer.profile_step:
                    from torch.profiler import ProfilerActivity, profile

                    cuda = ProfilerActivity.CUDA if torch.cuda.is_available() else ProfilerActivity.CPU
                    timer.prof = profile(activities=[cuda])
                    timer.prof.__enter__()

            def on_step_end(self, args: Any, state: Any, *a: Any, **k: Any) -> None:
                sync()
                timer.ends.append(time.perf_counter())
                timer.device_peak = max(timer.device_peak, device_used())
                if timer.prof is not None:
                    timer.prof.__exit__(None, None, None)
                    print_profile(timer.prof, 40)
                    timer.prof = None

        self.profile_step: int | None = None
        self.prof: Any = None
        self.callback = Callback()
        self.ends: list[float] = []
        self.rollouts: list[tuple[float, int]] = []  # (seconds, completion tokens)
        self.device_base = device_base
        self.device_peak = device_base

    def wrap_generate(self, trainer: Any) -> None:
        inner = trainer._generate

        def timed(prompts: Any) -> Any:
            sync()
            self._profile_kernels(False)  # the profile (--profile) is of the training part only
            t0 = time.perf_counter()
            out = inner(prompts)
            sync()
            self.rollouts.append((time.perf_counter() - t0, sum(len(c) for c in out[1])))
            self.device_peak = max(self.device_peak, device_used())
            self._profile_kernels(True)
            return out

        trainer._generate = timed

    def _profile_kernels(self, on: bool) -> None:
        import torch
        from torch.profiler import ProfilerActivity

        if self.prof is not None and torch.cuda.is_available():
            self.prof.toggle_collection_dynamic(on, [ProfilerActivity.CUDA])

    def result(self, warmup: int, count: int, tokens_per_step: int) -> dict[str, Any]:
        steps = [b - a for a, b in zip(self.ends, self.ends[1:], strict=False)][warmup : warmup + count]
        rollouts = self.rollouts[warmup : warmup + count]
        med = statistics.median(steps)
        out = {
            "steps_timed": len(steps),
            "warmup": warmup,
            "s_per_step": med,
            "step_times": steps,
            "peak_gib": peak("allocated"),
            "reserved_gib": peak("reserved"),
            "device_gib": (self.device_peak - self.device_base) / 2**30,
        }
        if rollouts:
            r_s = statistics.median(r for r, _ in rollouts)
            r_tok = statistics.median(n for _, n in rollouts)
            out |= {
                "rollout_s": r_s,
                "rollout_times": [r for r, _ in rollouts],
                "rollout_tok_s": r_tok / r_s,
                "train_tok_s": tokens_per_step / (med - r_s),
            }
        else:
            out["train_tok_s"] = tokens_per_step / med
        return out


# ---------------------------------------------------------------------------------------------
# Variants (each in its own process)


def unsloth_lora_model(model_dir: Path, max_seq_length: int, fast_inference: bool = False) -> tuple[Any, Any]:
    """Unsloth's defaults for the peer rows: FastLanguageModel, the workload's LoRA, its checkpointing;
    `fast_inference`: vLLM beside it (VLLM_SHARE of the GPU's memory) for the rollouts."""
    import torch
    from unsloth import FastLanguageModel

    vllm = dict(gpu_memory_utilization=VLLM_SHARE, max_lora_rank=32) if fast_inference else {}
    model, tok = FastLanguageModel.from_pretrained(
        str(model_dir),
        max_seq_length=max_seq_length,
        dtype=torch.bfloat16,
        load_in_4bit=False,
        fast_inference=fast_inference,
        **vllm,
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=32,
        lora_alpha=64,
        lora_dropout=0.0,
        target_modules=TARGETS,
        use_gradient_checkpointing="unsloth",
        random_state=3407,
    )
    return model, tok


def run_grpo(variant: str, model_dir: Path, warmup: int, steps: int, profile: bool = False) -> dict[str, Any]:
    import torch

    base = device_used()
    total = warmup + steps
    tmp = tempfile.mkdtemp(prefix="bench-grpo-")
    n_steps = total + 1 if profile else total
    vllm = dict(use_vllm=True, vllm_mode="colocate")
    if variant in ("grpo-unsloth", "grpo-unsloth-vllm"):
        fast = variant == "grpo-unsloth-vllm"
        model, tok = unsloth_lora_model(model_dir, PROMPT_LEN + COMPLETION_LEN, fast)  # first: Unsloth patches TRL
        from trl import GRPOTrainer

        cls, args = GRPOTrainer, grpo_args(tmp, n_steps, **(vllm if fast else {}))
    elif variant in ("grpo-trl", "grpo-trl-vllm"):
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOTrainer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, DTYPE), device_map=DEVICE_MAP)
        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS))
        cls = GRPOTrainer
        if variant == "grpo-trl-vllm":  # vLLM loads its own copy of model_dir (the model's name_or_path)
            vllm |= dict(vllm_gpu_memory_utilization=VLLM_SHARE, vllm_max_model_length=PROMPT_LEN + COMPLETION_LEN)
        args = grpo_args(
            tmp,
            n_steps,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            **(vllm if variant == "grpo-trl-vllm" else {}),
        )
    else:  # the product: its own model loading (backend hf) and trainer class
        from trl import GRPOTrainer

        from trainer.config import load_config
        from trainer.rollout.fast_grpo import trainer_class
        from trainer.training import training_model

        cfg = load_config(None, [f"model.name={model_dir}", f"model.dtype={DTYPE}", "lora.r=32", "lora.alpha=64"])
        model, tok = training_model(cfg, None)
        cls, args = trainer_class(cfg, GRPOTrainer), grpo_args(tmp, n_steps)
    if os.environ.get("BENCH_LEAN_LORA") == "0":  # diagnostics: PEFT's own LoRA forward in training
        cls.lean_lora = False
    if os.environ.get("BENCH_COMPILED_GLUE") == "0":  # diagnostics: eager norms / SwiGLU / rotary in training
        cls.compiled_glue = False
    if os.environ.get("BENCH_FUSE") == "0":  # diagnostics: the rollout engine's unfused weights (a GEMM each)
        cls.rollout_fuse = False
    if os.environ.get("BENCH_KERNELS") == "0":  # diagnostics: compiled glue + cuBLAS in the decode step
        cls.rollout_kernels = False
    timer = Timer(base)
    timer.profile_step = total if profile else None  # one more step, profiled and not timed
    trainer = cls(
        model=model,
        reward_funcs=reward_len,
        args=args,
        train_dataset=grpo_dataset(n_steps),
        processing_class=tok,
        callbacks=[timer.callback],
    )
    timer.wrap_generate(trainer)
    trainer.train()
    out = timer.result(warmup, steps, PROMPTS * GENERATIONS * (PROMPT_LEN + COMPLETION_LEN))
    out["trainer"] = f"{type(trainer).__module__}.{type(trainer).__name__}"
    if hasattr(trainer, "fast_rollout_reason"):
        out["fast_rollouts"] = trainer._rollout_engine is not None
    return out


def run_sft(variant: str, model_dir: Path, warmup: int, steps: int) -> dict[str, Any]:
    import datasets
    import numpy as np
    import torch

    base = device_used()
    total = warmup + steps
    rng = np.random.default_rng(0)
    data = datasets.Dataset.from_list(
        [{"input_ids": rng.integers(0, EOS_ID, SFT_LEN).tolist()} for _ in range(total * SFT_BATCH)]
    )
    extra: dict[str, Any] = {}
    peft_config = None
    if variant == "sft-unsloth":
        model, tok = unsloth_lora_model(model_dir, SFT_LEN)
    else:
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, DTYPE), device_map=DEVICE_MAP)
        peft_config = LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM")
        extra = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-sft-"),
        per_device_train_batch_size=SFT_BATCH,
        max_length=SFT_LEN,
        max_steps=total,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        bf16=not SMOKE,
        use_cpu=SMOKE,
        optim="adamw_torch",
        seed=3407,
        **extra,
    )
    timer = Timer(base)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[timer.callback],
    )
    trainer.train()
    return timer.result(warmup, steps, SFT_BATCH * SFT_LEN)


def run_rollout(model_dir: Path, repeats: int) -> dict[str, Any]:
    """The fast engine alone on the GRPO batch: seconds per 32 x 512 rollout, and a kernel profile."""
    import numpy as np
    import torch

    from trainer.config import load_config
    from trainer.rollout import RolloutEngine, Sampling
    from trainer.training import training_model

    cfg = load_config(None, [f"model.name={model_dir}", f"model.dtype={DTYPE}", "lora.r=32", "lora.alpha=64"])
    model, tok = training_model(cfg, None)
    with torch.no_grad():  # non-zero LoRA B, as after a few steps of training
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=1e-3)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, EOS_ID, PROMPT_LEN).tolist() for _ in range(PROMPTS)]
    prompts = [p for p in prompts for _ in range(GENERATIONS)]
    sampling = Sampling(temperature=1.0, min_p=0.1)
    # Like for like in one process: the engine without the weight layout (one GEMM per projection
    # and LoRA factor); with it (_fuse: one GEMM per group for the base weights and LoRA A) and the
    # compiled glue; with it and the Triton decode kernels (the default on CUDA).
    per_variant = {}
    variants = (("unfused", False, False), ("glue", True, False), ("kernels", True, True))
    only = os.environ.get("BENCH_ROLLOUT_ONLY")  # e.g. "kernels": time only these variants
    for variant, fuse, kernels in [v for v in variants if not only or v[0] in only.split(",")]:
        engine = RolloutEngine(model, eos_token_ids=[EOS_ID], pad_token_id=EOS_ID, fuse=fuse, kernels=kernels)
        if os.environ.get("BENCH_DECODE_ATTENTION"):
            engine.decode_attention = os.environ["BENCH_DECODE_ATTENTION"]
        times = []
        for i in range(repeats + 1):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = engine.generate(prompts, COMPLETION_LEN, sampling)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            n = sum(map(len, out.completion_ids))
            print(f"{variant} rollout {i}: {times[-1]:.3f} s, {n} tokens", flush=True)
        per_variant[variant] = statistics.median(times[1:])
        if variant != "kernels":
            del engine
            torch.cuda.empty_cache()
    print(f"rollout medians: {json.dumps(per_variant)}", flush=True)
    med = per_variant["kernels"]
    # Where a decode step's time goes: graph replays of the smallest and largest buckets under the
    # profiler (CUPTI records each kernel of a replayed graph), then one step run eagerly.
    for bucket in sorted(engine.graphs)[:: max(1, len(engine.graphs) - 1)]:
        engine.state.t.fill_(1)  # valid slots for the replays: the bucket's last ones, completion index 1..
        engine.state.slot.fill_(bucket - 6)
        profile_replays(engine.graphs[bucket], f"decode graph, {bucket} cache slots", reps=5)
    from torch.profiler import ProfilerActivity, profile

    engine.state.t.fill_(1)  # a valid state for one more step: the last cache slot, completion index 1
    engine.state.slot.fill_(engine.state.slots - 1)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine._decode_step(engine.state.slots)
        torch.cuda.synchronize()
    print_profile(prof, 25)
    return {
        "rollout_s": med,
        "rollout_tok_s": len(prompts) * COMPLETION_LEN / med,
        "first_s": times[0],
        "ms_per_token_step": 1000 * med / COMPLETION_LEN,
        "unfused_rollout_s": per_variant.get("unfused"),
        "glue_rollout_s": per_variant.get("glue"),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
    }


# ---------------------------------------------------------------------------------------------
# The GPU's ceilings and the floors


def ceilings() -> dict[str, float]:
    """Measured copy bandwidth (bytes read + written per second) and bf16 matmul rate."""
    import torch

    if not torch.cuda.is_available():  # BENCH_SMOKE on a CPU: nominal H100 figures
        return {"hbm_bytes_s": 3.0e12, "bf16_flops": 8.0e14, "gpu": "none (smoke run, nominal ceilings)"}
    x = torch.empty(2**31, dtype=torch.uint8, device="cuda").random_()
    y = torch.empty_like(x)
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")

    def timed(fn: Any, n: int) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    bw = 2 * x.numel() / timed(lambda: y.copy_(x), 20)
    flops = 2 * 8192**3 / timed(lambda: a @ b, 20)
    return {"hbm_bytes_s": bw, "bf16_flops": flops, "gpu": torch.cuda.get_device_name()}


def floors(c: dict[str, float]) -> dict[str, float]:
    h, n_layers, inter = SHAPE["hidden_size"], SHAPE["num_hidden_layers"], SHAPE["intermediate_size"]
    q = SHAPE["num_attention_heads"] * SHAPE["head_dim"]
    kv = SHAPE["num_key_value_heads"] * SHAPE["head_dim"]
    layer = h * (2 * q + 2 * kv) + 3 * h * inter  # matmul weights of one layer
    head = h * SHAPE["vocab_size"]  # tied: the embedding is read once per step, as the LM head
    weight_bytes = 2 * (n_layers * layer + head + n_layers * 2 * h)
    decode_s = COMPLETION_LEN * weight_bytes / c["hbm_bytes_s"]
    tokens = PROMPTS * GENERATIONS * (PROMPT_LEN + COMPLETION_LEN)
    # forward + backward (inputs' gradients) over every matmul, + the layers' recompute
    train_flops = tokens * (2 * (n_layers * layer + head) * 2 + 2 * n_layers * layer)
    train_s = train_flops / c["bf16_flops"]
    sft_tokens = SFT_BATCH * SFT_LEN
    sft_s = sft_tokens * (2 * (n_layers * layer + head) * 2 + 2 * n_layers * layer) / c["bf16_flops"]
    return {
        "weight_gib": weight_bytes / 2**30,
        "step_s": decode_s + train_s,
        "rollout_tok_s": PROMPTS * GENERATIONS * COMPLETION_LEN / decode_s,
        "train_tok_s": tokens / train_s,
        "sft_tok_s": sft_tokens / sft_s,
    }


# ---------------------------------------------------------------------------------------------
# The table


def table(results: dict[str, dict[str, Any]], fl: dict[str, float], c: dict[str, Any]) -> str:
    def ratio(x: float | None, floor: float, inverse: bool = False) -> str:
        if x is None:
            return "-"
        return f"{(floor / x if inverse else x / floor):.2f}x"

    lines = [
        f"GPU: {c['gpu']}; measured copy {c['hbm_bytes_s'] / 1e12:.2f} TB/s, bf16 matmul {c['bf16_flops'] / 1e12:.0f} TFLOP/s",
        "",
        "| GRPO variant | s/step | x floor | rollout tok/s | floor / this | training tok/s | floor / this "
        "| peak GiB | / weights | GPU GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in ("grpo-trl", "grpo-trl-vllm", "grpo-unsloth", "grpo-unsloth-vllm", "grpo-product"):
        r = results.get(v)
        if not r or "error" in r:
            lines.append(f"| {LABELS[v]} | {r.get('error', 'not run') if r else 'not run'} ||||||||")
            continue
        device = f"{r['device_gib']:.1f}" if "device_gib" in r else "-"
        lines.append(
            f"| {LABELS[v]} | {r['s_per_step']:.2f} | {ratio(r['s_per_step'], fl['step_s'])} "
            f"| {r.get('rollout_tok_s', 0):,.0f} | {ratio(r.get('rollout_tok_s'), fl['rollout_tok_s'], True)} "
            f"| {r['train_tok_s']:,.0f} | {ratio(r['train_tok_s'], fl['train_tok_s'], True)} "
            f"| {r['peak_gib']:.1f} | {ratio(r['peak_gib'], fl['weight_gib'])} | {device} |"
        )
    lines.append(
        f"| floor | {fl['step_s']:.2f} | 1.00x | {fl['rollout_tok_s']:,.0f} | 1.00x | {fl['train_tok_s']:,.0f} | 1.00x "
        f"| {fl['weight_gib']:.1f} | 1.00x | |"
    )
    lines += ["", "| SFT variant | tokens/s | floor / this | peak GiB |", "|---|---|---|---|"]
    for v in ("sft-trl", "sft-unsloth"):
        r = results.get(v)
        if not r or "error" in r:
            lines.append(f"| {LABELS[v]} | {r.get('error', 'not run') if r else 'not run'} |||")
            continue
        lines.append(
            f"| {LABELS[v]} | {r['train_tok_s']:,.0f} | {ratio(r['train_tok_s'], fl['sft_tok_s'], True)} "
            f"| {r['peak_gib']:.1f} |"
        )
    lines.append(f"| floor | {fl['sft_tok_s']:,.0f} | 1.00x | |")
    steps = ", ".join(f"{v} {r['warmup']}+{r['steps_timed']}" for v, r in results.items() if "warmup" in r)
    lines += ["", f"warm-up + timed steps: {steps}", f"versions: {c.get('versions', 'not recorded')}"]
    return "\n".join(lines)


def _text(b: bytes | str | None) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def versions() -> str:
    """The stack's versions, read from package metadata (importing Unsloth or vLLM here would take a minute)."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    names = ("torch", "transformers", "trl", "peft", "unsloth", "unsloth_zoo", "vllm", "bitsandbytes")
    return ", ".join(f"{n} {version(n)}" for n in names)


def run_variant(v: str, args: argparse.Namespace, left: float, gpu: int | None) -> dict[str, Any]:
    """One variant in its own process (on GPU `gpu` alone, where given); its RESULT, or the error."""
    warmup, steps = DEFAULT_STEPS[v]
    cmd = [sys.executable, __file__, "run", v, "--model-dir", args.model_dir]
    cmd += ["--warmup", str(warmup), "--steps", str(args.steps or steps)]
    env = dict(os.environ) | ({"CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else {})
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=min(args.timeout, left), env=env)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(cmd, -9, _text(e.stdout), _text(e.stderr) + "\ntimed out")
    (Path(args.out).parent / f"{v}.log").write_text(proc.stdout + proc.stderr)
    found = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if found:
        return json.loads(found[-1]) | ({"gpu": gpu} if gpu is not None else {})
    err = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return {"error": f"failed (exit {proc.returncode}): {err}"}


def run_all(args: argparse.Namespace) -> int:
    import torch

    model_dir = Path(args.model_dir)
    t0 = time.perf_counter()
    build_model(model_dir)
    print(f"model at {model_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
    c = ceilings() | {"versions": versions()}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    fl = floors(c)
    results: dict[str, dict[str, Any]] = {}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    queue = args.only.split(",")  # in the order given: with --budget, the first ones are sure to run
    lock = threading.Lock()

    def lane(gpu: int | None) -> None:
        while True:
            with lock:
                if not queue:
                    return
                v = queue.pop(0)
            left = args.budget - (time.perf_counter() - start)
            t0 = time.perf_counter()
            if left < MIN_SECONDS[v]:
                result = {"error": f"not run: {left:.0f} s of the --budget left"}
            else:
                result = run_variant(v, args, left, gpu)
            with lock:
                results[v] = result
                print(f"{v}: {time.perf_counter() - t0:.0f} s wall: {json.dumps(result)}", flush=True)
                out.write_text(json.dumps({"ceilings": c, "floors": fl, "results": results}, indent=1))

    # One lane runs in this thread on the process's own GPU; several take GPU 0, 1, ... one each.
    gpus = list(range(args.lanes)) if args.lanes > 1 else [None]
    threads = [threading.Thread(target=lane, args=(g,)) for g in gpus]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(table(results, fl, c))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="all", choices=["all", "run", "rollout", "build"])
    ap.add_argument("variant", nargs="?")
    ap.add_argument("--model-dir", default="/tmp/bench-qwen3-4b")
    ap.add_argument("--only", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=0, help="timed steps per variant (0: each variant's default)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument(
        "--profile", action="store_true", help="run: a kernel-time profile of one more step's training part"
    )
    ap.add_argument("--timeout", type=int, default=1200, help="seconds per variant")
    ap.add_argument("--budget", type=int, default=3600, help="seconds for all variants; later ones are skipped")
    ap.add_argument("--lanes", type=int, default=1, help="variants run at once, each alone on its own GPU (0, 1, ...)")
    ap.add_argument("--out", default=os.environ.get("BENCH_OUT", ".cache/bench/bench_grpo.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    if args.command == "build":
        build_model(Path(args.model_dir))
        return 0
    if args.command == "rollout":
        build_model(Path(args.model_dir))
        print("RESULT " + json.dumps(run_rollout(Path(args.model_dir), repeats=max(args.steps, 2))), flush=True)
        return 0
    if args.command == "run":
        if args.variant.startswith("grpo"):
            result = run_grpo(args.variant, Path(args.model_dir), args.warmup, args.steps, args.profile)
        else:
            result = run_sft(args.variant, Path(args.model_dir), args.warmup, args.steps)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
