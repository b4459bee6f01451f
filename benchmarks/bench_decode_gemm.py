"""The decode step's weight GEMMs at M = 32 rows: cuBLAS, Inductor's autotuned Triton, and trainer.rollout.decode_kernels.

Why: a Qwen3-4B decode step for 32 rows reads 8 GB of weights; at M = 32 the GEMMs are bound by
that read, and cuBLAS reached about 70% of the copy bandwidth on them (docs/benchmarks.md). This
prints, for each projection group's shape (fused base weights + LoRA A rows, as the rollout
engine lays them out), the time of 36 GEMMs in a row (one per layer, distinct weights so nothing
is served from L2) replayed from a CUDA graph, and the fraction of the copy bandwidth that is.

    python benchmarks/bench_decode_gemm.py [--rows 32] [--no-inductor]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from qwen3_4b_shape import QWEN3_4B  # noqa: E402

from trainer.rollout import decode_kernels  # noqa: E402


def shapes(r: int = 32) -> dict[str, tuple[int, int, int]]:
    """name -> (out rows incl. LoRA A rows, in features, how many layers)."""
    s = QWEN3_4B
    h, q, kv, i = (
        s["hidden_size"],
        s["num_attention_heads"] * 128,
        s["num_key_value_heads"] * 128,
        s["intermediate_size"],
    )
    n = s["num_hidden_layers"]
    return {
        "qkv": (q + 2 * kv + 3 * r, h, n),
        "o": (h + r, q, n),
        "gate_up": (2 * i + 2 * r, h, n),
        "down": (h + r, i, n),
        "lm_head": (s["vocab_size"], h, 1),
    }


def graph_time(fn, reps: int = 20) -> float:
    """Mean seconds of one call of `fn` replayed from a CUDA graph."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def copy_bandwidth() -> float:
    x = torch.empty(2 * 1024**3, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = graph_time(lambda: y.copy_(x))
    return 2 * x.numel() / t


def time_shape(name: str, n_out: int, k_in: int, layers: int, rows: int, bw: float, compiled: Any) -> dict[str, float]:
    """Seconds per GEMM of each variant on `layers` distinct weights of this shape; prints a row each."""
    ws = [torch.randn(n_out, k_in, device="cuda", dtype=torch.bfloat16) * 0.02 for _ in range(layers)]
    x = torch.randn(rows, k_in, device="cuda", dtype=torch.bfloat16)
    ref = F.linear(x, ws[0]).float()
    mb = n_out * k_in * 2 / 1e6
    variants = {"cublas": F.linear, "triton": decode_kernels.linear}
    if compiled is not None:
        variants["inductor"] = compiled
    out = {}
    for v, fn in variants.items():
        err = (fn(x, ws[0]).float() - ref).abs().max().item()
        t = graph_time(lambda fn=fn: [fn(x, w) for w in ws]) / layers
        out[v] = t
        print(f"{name:>8} {n_out:>6} x {k_in:<6} {mb:6.1f} | {v:>9} {t * 1e6:8.1f} {mb * 1e6 / t / bw:6.0%} {err:8.2e}")
    print(f"{'':>8} tiles: {decode_kernels.config_for(rows, n_out, k_in, torch.bfloat16) or 'cuBLAS'}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32, help="M: rows decoded at once (default 32)")
    ap.add_argument("--no-inductor", action="store_true", help="skip torch.compile max-autotune (slow to tune)")
    args = ap.parse_args()
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.2f} TB/s; M = {args.rows}")
    compiled = None
    if not args.no_inductor:
        compiled = torch.compile(F.linear, mode="max-autotune-no-cudagraphs", dynamic=False)
    totals: dict[str, float] = {}
    print(f"{'shape':>8} {'N x K':>14} {'MB':>6} | {'variant':>9} {'us/GEMM':>8} {'of bw':>6} {'max err':>8}")
    for name, (n_out, k_in, layers) in shapes().items():
        for v, t in time_shape(name, n_out, k_in, layers, args.rows, bw, compiled).items():
            totals[v] = totals.get(v, 0.0) + t * layers
    print("all GEMMs of one decode step: " + ", ".join(f"{v} {t * 1e3:.2f} ms" for v, t in totals.items()))
    floor = sum(n * k * 2 * layers for n, k, layers in shapes().values()) / bw
    print(f"floor (the weights at copy bandwidth): {floor * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
