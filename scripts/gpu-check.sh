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
#   scripts/gpu-check.sh vllm    [OUT]   the product's vLLM paths through the CLI: the tiny model sft ->
#                                        grpo (vLLM) -> eval -> infer on backend hf (grpo.use_vllm, TRL's
#                                        colocate) and on backend unsloth (fast_inference), then GRPO
#                                        steps at the Qwen3-4B shape on both; each step under a timeout,
#                                        all within VLLM_CHECK_S (540) seconds; VLLM_CHECK picks and
#                                        orders the jobs; with 2 GPUs two jobs run at once, one per GPU
#   scripts/gpu-check.sh vllm-bench [OUT] make bench's GRPO rows on the reference workload in one
#                                        table: TRL + vLLM colocate, Unsloth + vLLM, the product's fast
#                                        engine, Unsloth without vLLM (2 GPUs: two rows at a time)
# Where the Python stack is not installed on the host, a packed site-packages is unpacked into /tmp
# and put on PYTHONPATH first, if present: .device/site.tar.xz (TRL, Unsloth; /tmp/site), or for the
# vllm modes .device/vllm.tar.xz (vLLM, TRL, Unsloth, bitsandbytes; /tmp/vsite; built by
# scripts/device-vllm-site.sh). Logs go to OUT (/tmp/gpu-check).
set -euo pipefail
what=${1:?usage: scripts/gpu-check.sh tests|bench4b|fastpath|speed|vllm|vllm-bench [OUT]}
out=${2:-/tmp/gpu-check}
mkdir -p "$out"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
site=.device/site.tar.xz unpacked=/tmp/site
if [[ $what == vllm* ]]; then
  site=.device/vllm.tar.xz unpacked=/tmp/vsite
  # FlashInfer is not packed (vLLM samples with its own kernels), nor needed; no telemetry offline.
  export VLLM_USE_FLASHINFER_SAMPLER=0 UNSLOTH_VLLM_NO_FLASHINFER=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
    VLLM_ENABLE_V1_MULTIPROCESSING=0
fi
if [ -f "$site" ]; then
  [ -f "$unpacked/.unpacked" ] || { mkdir -p "$unpacked" && tar -C "$unpacked" -xJf "$site" && touch "$unpacked/.unpacked"; }
  export PYTHONPATH=$unpacked:$PYTHONPATH
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
print(*(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "peft", "unsloth", "vllm", "bitsandbytes")),
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
vllm)
  # Each job writes its stages' logs to OUT; `step` keeps every stage within the call's deadline.
  # A failed stage ends its own job only (reported in OUT/summary.txt), not the others.
  set +e
  deadline=$((SECONDS + ${VLLM_CHECK_S:-540}))
  # The image's default path (unsloth) first. With two GPUs the jobs alternate between them, so the
  # longest tiny job (Unsloth imports and starts vLLM in each of its four processes) pairs with
  # the shorter 4B job, and the recipe's own 4B job (unsloth) follows the quick tiny-hf.
  read -r -a jobs <<<"${VLLM_CHECK:-tiny-unsloth tiny-hf q4b-hf q4b-unsloth}"
  : >"$out/summary.txt"
  # step NAME MIN CAP CMD...: CMD under a timeout of CAP seconds or what is left before the deadline,
  # its output in OUT/NAME.log; skipped when less than MIN seconds are left. Returns CMD's status.
  step() {
    local name=$1 min=$2 cap=$3 left=$((deadline - SECONDS)) t=$SECONDS rc=0
    shift 3
    if [ "$left" -lt "$min" ]; then
      echo "$name: SKIPPED, $left s left" | tee -a "$out/summary.txt"
      return 1
    fi
    timeout -k 10 "$((left < cap ? left : cap))" "$@" >"$out/$name.log" 2>&1 || rc=$?
    echo "$name: exit $rc after $((SECONDS - t)) s" | tee -a "$out/summary.txt"
    [ "$rc" = 0 ] || tail -n 25 "$out/$name.log"
    return "$rc"
  }
  # expect NAME TEXT: the stage's log shows the path it was meant to take.
  expect() {
    if grep -qF "$2" "$out/$1.log"; then
      echo "$1: PASS ('$2')" | tee -a "$out/summary.txt"
    else
      echo "$1: FAIL, no '$2' in its log" | tee -a "$out/summary.txt"
    fi
  }
  # The tiny model in bf16 (the recipes' GPU dtype): TRL's vLLM loads the checkpoint's own dtype.
  tiny_model() {
    [ -f /tmp/tiny-vllm/model/config.json ] || $py -c 'import torch, trainer.tiny as t
from transformers import AutoModelForCausalLM, AutoTokenizer
p = t.ensure_tiny_model("/tmp/tiny-vllm/f32")
AutoModelForCausalLM.from_pretrained(p, dtype=torch.bfloat16).save_pretrained("/tmp/tiny-vllm/model")
AutoTokenizer.from_pretrained(p).save_pretrained("/tmp/tiny-vllm/model")'
  }
  # The tiny pipeline through the CLI on BACKEND with vLLM, each backend in a volume of its own.
  tiny() {
    local b=$1 sets
    sets=(--config configs/tiny.yaml --set "backend=$b" --set model.name=/tmp/tiny-vllm/model
          --set model.init=pretrained --set model.dtype=bfloat16 --set "report_to=[]"
          --set sft.optim=adamw_8bit --set grpo.optim=adamw_8bit --set sft.max_steps=10
          --set grpo.use_vllm=true --set grpo.max_steps=4 --set grpo.save_steps=2
          --set eval.limit=16 --set infer.max_new_tokens=32)
    export CHECKPOINT_DIR=/tmp/tiny-vllm/volume-$b
    rm -rf "$CHECKPOINT_DIR"
    step "tiny-$b-sft" 30 180 "$py" -m trainer sft "${sets[@]}" || return 0
    step "tiny-$b-grpo" 60 300 "$py" -m trainer grpo "${sets[@]}" || return 0
    expect "tiny-$b-grpo" "GRPO rollouts: vLLM (colocate)"
    step "tiny-$b-eval" 40 240 "$py" -m trainer eval "${sets[@]}" || return 0
    step "tiny-$b-infer" 30 180 "$py" -m trainer infer "${sets[@]}" --prompt "What is 12*7?" || return 0
    if [ "$b" = unsloth ]; then
      expect "tiny-$b-eval" "generation: vLLM through Unsloth's fast_inference"
      expect "tiny-$b-infer" "generation: vLLM through Unsloth's fast_inference"
    fi
  }
  # The reference recipe's GRPO at the Qwen3-4B shape (random weights, its lengths) on BACKEND with
  # vLLM colocated, 2 steps from the fresh LoRA: step times and peak memory (gpu_grpo_step.py).
  q4b() {
    local b=$1
    if ! (flock 9 && q4b_model) 9>/tmp/q4b.lock >"$out/q4b-build.log" 2>&1; then  # both lanes may ask at once
      echo "q4b-build: FAIL (OUT/q4b-build.log)" | tee -a "$out/summary.txt"
      return 0
    fi
    export CHECKPOINT_DIR=/tmp/q4b/volume-$b
    rm -rf "$CHECKPOINT_DIR"
    step "q4b-$b-grpo" 150 420 "$py" benchmarks/gpu_grpo_step.py --config configs/qwen3-4b.yaml "${q4b_sets[@]}" \
      --set "backend=$b" --set grpo.use_vllm=true --set grpo.max_steps=2 --set grpo.save_steps=2 \
      --set grpo.start_from=/tmp/q4b/adapter || return 0
    expect "q4b-$b-grpo" "GRPO rollouts: vLLM (colocate)"
    grep -E "step [0-9]+:|peak GPU memory" "$out/q4b-$b-grpo.log" | sed "s/^/q4b-$b: /" | tee -a "$out/summary.txt"
  }
  job() {
    case $1 in
    tiny-hf | tiny-unsloth) (flock 9 && tiny_model) 9>/tmp/tiny-vllm.lock && tiny "${1#tiny-}" ;;
    q4b-hf | q4b-unsloth) q4b "${1#q4b-}" ;;
    *) echo "unknown vllm job '$1'; use tiny-unsloth, tiny-hf, q4b-hf, q4b-unsloth" >&2 ;;
    esac
  }
  if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
    # Two lanes, one GPU each, taking the jobs alternately in the order given.
    lane() { for ((i = $1; i < ${#jobs[@]}; i += 2)); do CUDA_VISIBLE_DEVICES=$1 job "${jobs[i]}"; done; }
    lane 0 &
    first=$!
    lane 1
    wait "$first"
  else
    for j in "${jobs[@]}"; do job "$j"; done
  fi
  echo "--- summary"
  cat "$out/summary.txt"
  ;;
vllm-bench)
  gpus=$(nvidia-smi -L | wc -l)
  # The new rows first: with --budget, a row that cannot finish in time is skipped, not cut short.
  $py benchmarks/bench_grpo.py --only grpo-trl-vllm,grpo-unsloth-vllm,grpo-product,grpo-unsloth \
    --lanes "$((gpus >= 2 ? 2 : 1))" --budget "${VLLM_BENCH_S:-500}" --timeout 420 \
    --model-dir /tmp/bench-qwen3-4b --out "$out/bench_grpo.json" 2>&1 | tee "$out/bench.log"
  ;;
*)
  echo "unknown check '$what'; use tests, bench4b, fastpath, speed, vllm or vllm-bench" >&2
  exit 2
  ;;
esac
