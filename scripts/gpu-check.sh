#!/usr/bin/env bash
# The GPU checks recorded in docs/gpu.md, run from the repo root on a machine with a CUDA GPU.
#   scripts/gpu-check.sh tests   [OUT]   make test-gpu's tests: the tiny model through every stage
#                                        on the unsloth backend, and the plain transformers/PEFT reload
#                                        (GPU_CHECK_K=EXPR: only the tests pytest -k EXPR selects)
#   scripts/gpu-check.sh bench4b [OUT]   a random Qwen3-4B-shaped model at the recipe's lengths:
#                                        GRPO (3 steps) timed, peak memory (BENCH4B_SFT=1: sft first);
#                                        the model in /tmp/q4b is built once per machine and reused;
#                                        BENCH4B_RESUME=1: a checkpoint every step, and a rerun on the
#                                        same machine resumes the last run (steps over two calls)
#   scripts/gpu-check.sh fastpath [OUT]  the fast GRPO path: the rollout tests (every shape, both
#                                        optimizers), then the reference recipe's shape on backend hf with
#                                        fast rollouts, 3 steps uncapped and 3 under a 22 GiB cap
#   scripts/gpu-check.sh speed   [OUT]   the product's GRPO step on the reference workload, as is and
#                                        with the rollout's Triton decode kernels off, one process
#                                        each, then the rollout engine alone: unfused, fused with
#                                        compiled glue, with the kernels (docs/benchmarks.md
#                                        "Like for like", about 7 minutes)
# Where the Python stack is not installed on the host, a packed site-packages at .device/site.tar.xz
# (if present) is unpacked into /tmp/site and put on PYTHONPATH first. Logs go to OUT (/tmp/gpu-check).
set -euo pipefail
what=${1:?usage: scripts/gpu-check.sh tests|bench4b|fastpath|speed [OUT]}
out=${2:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ -f .device/site.tar.xz ]; then
  [ -f /tmp/site/.unpacked ] || { mkdir -p /tmp/site && tar -C /tmp/site -xJf .device/site.tar.xz && touch /tmp/site/.unpacked; }
  export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# Versions from package metadata: importing unsloth here would cost most of a minute of the call.
$py -c 'import importlib.metadata as m, importlib.util as u
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "not installed"
print(*(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "peft", "unsloth")),
      "vllm importable:", u.find_spec("vllm") is not None)' 2>&1 | tee -a "$out/gpu.txt"

# The random Qwen3-4B-shaped model, its fresh LoRA and prompts in /tmp/q4b (bench4b, fastpath): built once
# per machine, so a second call on a still-warm machine spends its time on GRPO.
q4b_model() {
  if [ -f /tmp/q4b/adapter/adapter_config.json ]; then
    echo "build: reusing /tmp/q4b"
  else
    $py benchmarks/make_qwen3_4b_random.py /tmp/q4b 2>&1 | tee "$out/build.log"
  fi
}
# The recipe's GRPO on that model, 3 steps, its prompts, no tracker or completion tables.
q4b_sets=(--set model.name=/tmp/q4b/model --set "report_to=[]"
          --set grpo.dataset.path=/tmp/q4b/prompts.jsonl --set grpo.dataset.name=null
          --set grpo.max_steps=3 --set grpo.log_completions=false)

case $what in
tests)
  # Each stage's output lands in OUT as it runs (tests/test_gpu.py), so a killed run still tells where it was.
  TRAINER_GPU_TEST_LOGS=$out $py -m pytest -v -ra -m gpu --durations=0 ${GPU_CHECK_K:+-k "$GPU_CHECK_K"} tests/ 2>&1 \
    | tee "$out/tests.log"
  ;;
bench4b)
  # Device-level memory every second, beside torch's own peak counters (benchmarks/gpu_grpo_step.py).
  nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader -l 1 >"$out/smi.csv" &
  smi=$!
  trap 'kill $smi' EXIT
  t=$SECONDS
  q4b_model
  echo "build: $((SECONDS - t)) s"
  export CHECKPOINT_DIR=/tmp/q4b/checkpoints
  save=3
  if [ "${BENCH4B_RESUME:-0}" = 1 ]; then
    save=1  # the product resumes from the newest checkpoint: steps the call limit cut off are not lost
  else
    rm -rf "$CHECKPOINT_DIR"  # a rerun times fresh steps, not a resume of the last run's checkpoint
  fi
  sets=("${q4b_sets[@]}" --set sft.dataset.path=src/trainer/sample_data/sft.jsonl --set sft.max_steps=2
        --set "grpo.save_steps=$save")
  # GRPO starts from the fresh LoRA the build wrote: on a fresh machine, build + sft + 3 GRPO steps
  # at these lengths outlast one 600 s device call (docs/gpu.md). BENCH4B_SFT=1 runs sft first.
  start=(--set grpo.start_from=/tmp/q4b/adapter)
  if [ "${BENCH4B_SFT:-0}" = 1 ]; then
    t=$SECONDS
    $py -m trainer sft --config configs/qwen3-4b.yaml "${sets[@]}" 2>&1 | tee "$out/sft4b.log"
    echo "sft stage: $((SECONDS - t)) s"
    start=()
  fi
  t=$SECONDS
  $py benchmarks/gpu_grpo_step.py --config configs/qwen3-4b.yaml "${sets[@]}" "${start[@]}" 2>&1 | tee "$out/grpo4b.log"
  echo "grpo stage: $((SECONDS - t)) s"
  cp /tmp/q4b/checkpoints/qwen3-4b/grpo/bench.json "$out/"
  echo "peak memory.used (nvidia-smi): $(cut -d, -f2 "$out/smi.csv" | sort -n | tail -1)"
  ;;
fastpath)
  timeout "${FASTPATH_TEST_S:-300}" "$py" -m pytest -q -ra -m gpu --durations=5 tests/test_rollout.py 2>&1 \
    | tee "$out/rollout-tests.log" || true
  q4b_model >/dev/null
  export CHECKPOINT_DIR=/tmp/q4b/checkpoints
  sets=("${q4b_sets[@]}" --set backend=hf --set grpo.use_vllm=false --set grpo.rollout_engine=fast
        --set grpo.save_steps=3 --set grpo.start_from=/tmp/q4b/adapter)
  for cap in ${FASTPATH_CAPS:-0 22}; do
    rm -rf "$CHECKPOINT_DIR"
    GPU_MEMORY_CAP_GIB=$cap timeout "${FASTPATH_STEP_S:-240}" "$py" benchmarks/gpu_grpo_step.py \
      --config configs/qwen3-4b.yaml "${sets[@]}" >"$out/recipe-cap$cap.log" 2>&1 || echo "recipe shape, cap $cap: exit $?"
    grep -E "capped|step [0-9]+:|median|peak GPU|Error|error:" "$out/recipe-cap$cap.log" | tail -12
  done
  ;;
speed)
  m=/tmp/bench-qwen3-4b
  $py benchmarks/bench_grpo.py build --model-dir "$m"
  $py -c "import sys; sys.path.insert(0, 'benchmarks'); import bench_grpo as b; print('ceilings', b.ceilings())" \
    | tee "$out/ceilings.txt"
  run=(benchmarks/bench_grpo.py run grpo-product --model-dir "$m" --warmup 1 --steps 3)
  $py "${run[@]}" --profile >"$out/product.log" 2>&1
  BENCH_KERNELS=0 $py "${run[@]}" >"$out/product-before.log" 2>&1
  $py benchmarks/bench_grpo.py rollout --model-dir "$m" --steps 2 >"$out/rollout.log" 2>&1
  grep -h -E "^RESULT|^rollout medians" "$out/product.log" "$out/product-before.log" "$out/rollout.log"
  ;;
*)
  echo "unknown check '$what'; use tests, bench4b, fastpath or speed" >&2
  exit 2
  ;;
esac
