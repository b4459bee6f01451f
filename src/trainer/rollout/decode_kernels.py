"""Triton kernels for the rollout engine's decode step (one token per row, CUDA only).

Why: a Qwen3-4B decode step for 32 rows ran 806 kernels in 6.2-6.8 ms, 0.6 ms of it idle between
them (H100 profile, docs/benchmarks.md), 22 per layer. With these a layer is 12: four group GEMMs
(`linear`: base outputs and x A^T in one, layout._fuse), o's and down's LoRA B GEMMs with the
compiled residual add + RMSNorm after each (a kernel per row that also added (x A^T) B^T took 30 us,
ten times as long: 32 rows cannot spread B's reads over the GPU), and kernels that add the LoRA
terms (x A^T) B^T from the group GEMM's output where that pays:
- `qkv_to_cache`: LoRA, Qwen3's per-head q/k RMSNorm, the rotary embedding, the K/V cache write;
- `attend`: attention over the live cache slots only (the row's first real token to the current
  one), online softmax, the query heads of a K/V head sharing each K/V read;
- `silu_mul`: LoRA on gate and up (a tensor-core product per tile), then SwiGLU;
- `linear`: y = x w^T for a few rows, tiles chosen per shape by timing against cuBLAS (cuBLAS
  where it is as fast); reading the weights bounds it.
Tile choices are timed once per GPU model and software stack and kept on the checkpoint volume
(`_tuned`), so only the first run on a machine pays for the search.
The kernels (trainer.rollout.decode_triton) round to the model's dtype after each operation, as the eager
HF code does, and run in float32 too (exact dot products), which the GPU exactness test uses.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

MAX_ROWS = 64  # `linear` above this many rows: no longer bound by the weight read, so cuBLAS
MAX_GROUP = 16  # query heads per K/V head that `attend` handles (padded to 16 rows for tl.dot)
DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def tuning_file() -> Path:
    """Where tile choices are kept: TRAINER_TUNING_FILE, else beside the runs on the checkpoint volume."""
    from trainer.volume import checkpoint_root

    return Path(os.environ.get("TRAINER_TUNING_FILE") or checkpoint_root() / ".tuning" / "decode-tiles.json")


def _tuned(search: Callable[..., tuple[int, ...] | None]) -> Callable[..., tuple[int, ...] | None]:
    """`search` (a timed tile search) memoised in this process and in `tuning_file()`, keyed by its
    arguments, the GPU model and the torch / Triton versions. Why: the searches made the first GRPO
    step of every process 40-57 s where the next took 3-10 s (Qwen3-4B, H100 and H200)."""

    @functools.cache
    def tuned(*args: Any) -> tuple[int, ...] | None:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        stack = [gpu, torch.__version__, _version("triton")]
        key = json.dumps([search.__name__, stack, [str(a) for a in args]])
        path = tuning_file()
        table = _read_table(path)
        if key not in table:
            table = _keep(path, key, search(*args))
        return None if table[key] is None else tuple(table[key])

    return tuned


def _read_table(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _keep(path: Path, key: str, choice: tuple[int, ...] | None) -> dict[str, Any]:
    """Add `key`'s choice to the tuning file and return the table. Under a lock, the file read again
    first: the processes of a several-GPU run search at the same time, and each keeps what the others
    wrote (a rewrite of what it read before its search would drop their entries). A key another
    process wrote meanwhile stays as it is (the same GPU model: either choice fits)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            table = _read_table(path)
            if key not in table:
                table[key] = choice
                tmp = path.with_name(f".{path.name}.{os.getpid()}")
                tmp.write_text(json.dumps(table, indent=0))
                os.replace(tmp, path)  # readers, which take no lock, see the old table or the new one
            return table
    except OSError as e:  # a read-only volume: keep the choice for this process only
        log.debug("tile choices not kept in %s: %s", path, e)
        return {key: choice}


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


@functools.cache
def _kernels() -> Any:
    from trainer.rollout import decode_triton

    return decode_triton


def available(device: torch.device, dtype: torch.dtype, heads: tuple[int, int, int]) -> bool:
    """Whether the kernels run here: CUDA, Triton, a float dtype, and heads (query, K/V, dim) they cover."""
    n, n_kv, d = heads
    if device.type != "cuda" or dtype not in DTYPES or n // n_kv > MAX_GROUP or d < 16 or d & (d - 1):
        return False
    try:
        _kernels()
    except Exception as e:  # no Triton, or one that cannot build here: the engine keeps its other path
        log.info("Triton decode kernels unavailable (%s); using the compiled-glue path", e)
        return False
    return True


def _prec(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # tf32 only matters for float32 inputs


def _block(n: int) -> int:
    """A power-of-two block covering n, at least 16 (Triton's aranges; tl.dot's smallest side)."""
    return max(16, 1 << (n - 1).bit_length())


def _rank_block(cols: list[tuple[int, int]]) -> int:
    return _block(max((r for _, r in cols), default=0))


def qkv_to_cache(
    y: torch.Tensor,
    lora: Any,
    qk_norm: tuple[torch.Tensor, torch.Tensor] | None,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: torch.Tensor,
    slot: torch.Tensor,
    heads: tuple[int, int, int],
) -> torch.Tensor:
    """y [B, (H + 2 Hkv) D + ranks]: one row per token of the q/k/v group GEMM (q, k, v, then
    x A^T); lora: (B buffer, [(first column, rank)] of q, k, v) or None; qk_norm: Qwen3's q/k norm
    weights or None; cos, sin [B, D]; cache [2, B, Hkv, S, D], written at `slot` [1].
    Returns q [B, H, D] normed and rotated; k (normed, rotated) and v go into the cache."""
    n, n_kv, d = heads
    batch = y.shape[0]
    q = torch.empty((batch, n, d), dtype=y.dtype, device=y.device)
    bm, cols = lora if lora is not None else (y, [(0, 0)] * 3)
    (cq, rq), (ck, rk), (cv, rv) = cols
    qw, kw = qk_norm if qk_norm is not None else (y, y)
    _kernels().qkv[(batch, n + 2 * n_kv)](
        y, y.stride(0), (n + 2 * n_kv) * d, bm, bm.stride(0), cq, rq, ck, rk, cv, rv, qw, kw,
        cos, sin, cos.stride(0), q, cache, cache.stride(0), cache.stride(1), cache.stride(2), slot, eps,
        H=n, HKV=n_kv, D=d, RB=_rank_block(cols), HAS_LORA=lora is not None, HAS_NORM=qk_norm is not None,
        num_warps=1,
    )  # fmt: skip
    return q


def silu_mul(y: torch.Tensor, lora: Any, inter: int) -> torch.Tensor:
    """silu(gate + LoRA) * (up + LoRA) [B, I] from the gate/up group GEMM's output y [B, 2 I + ranks]."""
    batch = y.shape[0]
    a = torch.empty((batch, inter), dtype=y.dtype, device=y.device)
    bm, cols = lora if lora is not None else (y, [(0, 0)] * 2)
    (cg, rg), (cu, ru) = cols
    bn, bb = 64, 16
    _kernels().silu_mul[(math.ceil(inter / bn), math.ceil(batch / bb))](
        y, y.stride(0), bm, bm.stride(0), cg, rg, cu, ru, a, inter, batch,
        BN=bn, BB=bb, RB=_rank_block(cols), HAS_LORA=lora is not None, PREC=_prec(y.dtype), num_warps=4,
    )  # fmt: skip
    return a


def attend(q: torch.Tensor, cache: torch.Tensor, start: torch.Tensor, slot: torch.Tensor, scale: float) -> torch.Tensor:
    """q [B, H, D]; attends over cache slots start[b] .. slot (inclusive). Returns [B, H * D]."""
    cfg = attn_config(*q.shape, cache.shape[2], cache.shape[3], q.dtype) if q.is_cuda else (64, 3, 4)
    return _attend(q, cache, start, slot, scale, cfg)


def _attend(q: torch.Tensor, cache: torch.Tensor, start: torch.Tensor, slot: torch.Tensor, scale: float,
            cfg: tuple[int, int, int]) -> torch.Tensor:  # fmt: skip
    batch, n, d = q.shape
    n_kv = cache.shape[2]
    bj, stages, warps = cfg
    o = torch.empty((batch, n * d), dtype=q.dtype, device=q.device)
    _kernels().attn[(batch, n_kv)](
        q, cache, cache.stride(0), cache.stride(1), cache.stride(2), start, slot, o, scale,
        H=n, G=n // n_kv, D=d, BJ=bj, PREC=_prec(q.dtype), num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return o


@_tuned
def attn_config(batch: int, n: int, d: int, n_kv: int, slots: int, dtype: torch.dtype) -> tuple[int, int, int]:
    """(BJ, stages, warps) for `attend`, the fastest over a full cache (timed once: `_tuned`)."""
    from triton.testing import do_bench

    q = torch.randn(batch, n, d, device="cuda", dtype=dtype)
    cache = torch.randn(2, batch, n_kv, slots, d, device="cuda", dtype=dtype)
    start = torch.zeros(batch, dtype=torch.long, device="cuda")
    slot = torch.full((1,), slots - 1, dtype=torch.long, device="cuda")
    timed = {}
    for cfg in [(bj, st, wp) for bj in (32, 64, 128) for st in (2, 3, 4) for wp in (4, 8)]:
        try:
            timed[cfg] = do_bench(lambda cfg=cfg: _attend(q, cache, start, slot, d**-0.5, cfg), warmup=5, rep=20)
        except Exception as e:  # tiles the compiler rejects are skipped
            log.debug("decode attention tiles %s failed: %s", cfg, e)
    best = min(timed, key=timed.get)
    log.info("decode attention %d x %d slots: %s %.1f us", batch, slots, best, timed[best] * 1e3)
    return best


SAMPLE_CHUNK = 4096  # vocabulary entries per program of the sampler


def samples_here(s: Any) -> bool:
    """Whether `sample` draws for these settings (rollout.Sampling): temperature and min_p only."""
    return s.do_sample and not s.top_k and s.top_p >= 1.0


def sample(
    logits: torch.Tensor, temperature: float, min_p: float | None, seed: torch.Tensor, step: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """rollout.choose_tokens for `samples_here` settings in three kernels over [B, V] logits (any
    float dtype): (token [B], log-probability [B] under the temperature-scaled, unfiltered softmax).
    The noise comes from Philox keyed by seed + step (device tensors [1]), so a captured graph draws
    fresh noise at every replay and every rollout (a new seed)."""
    batch, vocab = logits.shape
    nc = math.ceil(vocab / SAMPLE_CHUNK)
    ncb = _block(nc)
    dev = logits.device
    part = torch.empty((batch, nc, 2), dtype=torch.float32, device=dev)
    best_r = torch.empty((batch, nc), dtype=torch.float32, device=dev)
    best_i = torch.empty((batch, nc), dtype=torch.int32, device=dev)
    token = torch.empty(batch, dtype=torch.long, device=dev)
    logp = torch.empty(batch, dtype=torch.float32, device=dev)
    log_min_p = math.log(min_p) if min_p else -math.inf
    k = _kernels()
    k.sample_stats[(batch, nc)](logits, logits.stride(0), temperature, part, vocab, nc, CH=SAMPLE_CHUNK)
    k.sample_race[(batch, nc)](
        logits, logits.stride(0), temperature, log_min_p, part, best_r, best_i, seed, step, vocab, nc,
        CH=SAMPLE_CHUNK, NCB=ncb,
    )  # fmt: skip
    k.sample_pick[(batch,)](logits, logits.stride(0), temperature, part, best_r, best_i, token, logp, nc, NCB=ncb)
    return token, logp


def _candidates() -> list[tuple[int, int, int, int]]:
    """(BN, BK, stages, warps); tiles too large for shared memory fail to build and are skipped.

    Timing 96 candidates (stages 3, 4, 6; warps 4, 8) on the Qwen3-4B shapes picked only 4 warps
    and 3-4 stages, and made the first rollout a minute longer (docs/benchmarks.md): these 32 remain."""
    return [(bn, bk, st, 4) for bn in (16, 32, 64, 128) for bk in (64, 128, 256, 512) for st in (3, 4)]


def _mm(x: torch.Tensor, w: torch.Tensor, cfg: tuple[int, int, int, int]) -> torch.Tensor:
    bn, bk, stages, warps = cfg
    m, k = x.shape
    n = w.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    bm = _block(m)
    _kernels().mm[(math.ceil(n / bn),)](
        x, w, y, m, n, k, BM=bm, BN=bn, BK=bk, PREC=_prec(x.dtype), num_stages=stages, num_warps=warps
    )
    return y


@_tuned
def config_for(m: int, n: int, k: int, dtype: torch.dtype) -> tuple[int, int, int, int] | None:
    """The fastest tiles for this shape, or None where cuBLAS is as fast (timed once: `_tuned`)."""
    from triton.testing import do_bench

    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype)
    best, best_t = None, do_bench(lambda: F.linear(x, w), warmup=5, rep=20)
    cublas = best_t
    for cfg in _candidates():
        if k % cfg[1]:
            continue
        try:
            t = do_bench(lambda cfg=cfg: _mm(x, w, cfg), warmup=5, rep=20)
        except Exception as e:  # tiles the compiler rejects (shared memory) are skipped
            log.debug("decode GEMM tiles %s failed: %s", cfg, e)
            continue
        if t < best_t:
            best, best_t = cfg, t
    log.info("decode GEMM %dx%dx%d: %s %.1f us, cuBLAS %.1f us", m, n, k, best or "cuBLAS", best_t * 1e3, cublas * 1e3)
    return best


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """F.linear(x, w) without bias for x [..., K] on the GPU, through `mm` where it was timed faster."""
    flat = x.reshape(-1, x.shape[-1])
    if x.is_cuda and flat.shape[0] <= MAX_ROWS and flat.is_contiguous() and w.is_contiguous() and x.dtype == w.dtype:
        cfg = config_for(flat.shape[0], w.shape[0], flat.shape[1], x.dtype)
        if cfg is not None:
            return _mm(flat, w, cfg).view(*x.shape[:-1], w.shape[0])
    return F.linear(x, w)
