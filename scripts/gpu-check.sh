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
#   scripts/gpu-check.sh scale   [OUT]   two GPUs (docs/scaling.md): GRPO on the Qwen3-4B-shaped model
#                                        on 1 GPU, then 2 GPUs under DDP (same per-GPU batch, fast
#                                        rollouts on each GPU), SIGTERM during a 2-GPU run and its
#                                        resume, FSDP2 GRPO, SFT on 2 GPUs; s/step, tokens/s, scaling
#                                        efficiency and checks in a table at the end (about 9 minutes;
#                                        SCALE_PARTS picks runs, SCALE_BUDGET_S caps the whole,
#                                        SCALE_SETS adds overrides to every run)
# Where the Python stack is not installed on the host, a packed site-packages is unpacked into /tmp
# and put on PYTHONPATH first, if present: .device/site.tar.xz (TRL, Unsloth; /tmp/site), or for the
# vllm modes .device/vllm.tar.xz (vLLM, TRL, Unsloth, bitsandbytes; /tmp/vsite; built by
# scripts/device-vllm-site.sh). Logs go to OUT (/tmp/gpu-check).
set -euo pipefail
what=${1:?usage: scripts/gpu-check.sh tests|bench4b|fastpath|speed|vllm|vllm-bench|scale [OUT]}
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
scale)
  # Every run goes through the product's own entry points (python -m trainer, and python -m
  # trainer.launch as make GPUS=2 runs it) with a time cap each, so one hang does not eat the call.
  # Each run's output: OUT/<run>.log, nvidia-smi per-GPU memory OUT/<run>.smi.csv.
  budget_end=$((SECONDS + ${SCALE_BUDGET_S:-520}))
  q4b_model >/dev/null
  export CHECKPOINT_DIR=/tmp/q4b/scale
  mkdir -p "$CHECKPOINT_DIR"
  # Earlier runs go (each run here starts fresh); the decode kernels' tile choices (.tuning) stay.
  find "$CHECKPOINT_DIR" -mindepth 1 -maxdepth 1 ! -name .tuning -exec rm -rf {} +
  steps=${SCALE_STEPS:-4}  # step 1 compiles and captures; the table times the steps after it
  extra=()  # SCALE_SETS="key=value ...": more overrides for every run (e.g. grpo.optim=adamw_torch)
  for kv in ${SCALE_SETS:-}; do extra+=(--set "$kv"); done
  grpo=(grpo --config configs/qwen3-4b.yaml "${q4b_sets[@]}" "${extra[@]}" --set backend=hf --set grpo.use_vllm=false
        --set grpo.start_from=/tmp/q4b/adapter --set "grpo.per_device_train_batch_size=${SCALE_BATCH:-4}"
        --set "grpo.max_completion_length=${SCALE_COMPLETION:-512}"
        --set "grpo.max_steps=$steps" --set "grpo.save_steps=$steps")
  # FSDP2 runs TRL's generate (the fast engine runs under DDP only), which gathers every layer's
  # shards for each token: shorter completions keep it inside the call. adamw_torch: bitsandbytes'
  # 8-bit optimizers are not known to work on FSDP2's sharded (DTensor) parameters.
  trl=(--set grpo.rollout_engine=trl --set "grpo.max_completion_length=${SCALE_TRL_COMPLETION:-128}")
  fsdp_optim=(--set "grpo.optim=${SCALE_FSDP_OPTIM:-adamw_torch}")
  sft=(sft --config configs/qwen3-4b.yaml "${extra[@]}" --set model.name=/tmp/q4b/model --set "report_to=[]" --set backend=hf
       --set sft.dataset.path=src/trainer/sample_data/sft.jsonl --set sft.logging_steps=1
       --set "sft.max_steps=$((steps + 2))" --set "sft.save_steps=$((steps + 2))")
  port=29400  # run() moves it on for each run: a port the last run used may not be free yet
  # one / two run as run()'s background job: exec, so that run() signals the launcher itself, not a
  # shell around it (which would die and leave the processes running without the signal).
  two() {  # two ENGINE ARGS...: the stage on both GPUs under configs/accelerate/ENGINE.yaml
    local engine=$1; shift
    exec "$py" -m trainer.launch --config_file "configs/accelerate/$engine.yaml" --num_processes 2 \
      --main_process_ip 127.0.0.1 --main_process_port "$port" -m trainer "$@"
  }
  one() { CUDA_VISIBLE_DEVICES=0 exec "$py" -m trainer "$@"; }
  declare -A rc
  rows=()  # the runs of this call, for the table: SLUG:ENGINE:STAGE_DIR (benchmarks/scale_summary.py)
  # run SLUG CAP_S CMD...: CMD with its log and memory trace in OUT; SIGTERM once OUT/SLUG.log
  # shows $stop_at (if set); past CAP_S (or the call's budget) SIGTERM, 20 s later SIGKILL to it
  # and the processes it started (torchrun puts each in a session of its own). Fails only where
  # too little of the call's time is left to start CMD.
  run() {
    local slug=$1 cap=$2; shift 2
    local left=$((budget_end - SECONDS))
    ((cap <= left)) || cap=$left
    if ((cap < 40)); then
      echo "$slug: not run, the call's time is spent" | tee "$out/$slug.log"
      rc[$slug]=skipped
      return 1
    fi
    port=$((port + 1))
    nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -l 1 >"$out/$slug.smi.csv" &
    local smi=$! t=$SECONDS kids="" signalled=0 code=0
    "$@" >"$out/$slug.log" 2>&1 &
    local pid=$!
    while kill -0 "$pid" 2>/dev/null; do
      sleep 1
      if [ -n "${stop_at:-}" ] && ((signalled == 0)) && grep -q "$stop_at" "$out/$slug.log"; then
        kill -TERM "$pid"
        signalled=$SECONDS
        echo "$slug: SIGTERM to the launcher $((SECONDS - t)) s in, once the log showed '$stop_at'"
      fi
      if ((SECONDS - t > cap)) && [ -z "$kids" ]; then
        kids="$(pgrep -P "$pid" | tr '\n' ' ' || true) "  # the space: not empty once past the cap
        echo "$slug: still running after $cap s; SIGTERM"
        kill -TERM "$pid" 2>/dev/null || true
      elif ((SECONDS - t > cap + 20)); then
        # shellcheck disable=SC2086  # the ids, one word each
        kill -KILL "$pid" $kids 2>/dev/null || true
      fi
    done
    wait "$pid" || code=$?
    kill "$smi" 2>/dev/null || true
    rc[$slug]=$code
    local after=""
    ((signalled == 0)) || after=", $((SECONDS - signalled)) s after SIGTERM"
    echo "$slug: exit $code after $((SECONDS - t)) s$after"
  }
  d=$CHECKPOINT_DIR
  term_steps=$((steps + 4))  # room after the signal: it lands a step or two after step 1
  for part in ${SCALE_PARTS:-one two term fsdp2 sft2 one-trl}; do
    case $part in
    one)
      run grpo-1gpu 170 one "${grpo[@]}" --set run_name=one &&
        rows+=("grpo-1gpu:single:$d/one/grpo")
      ;;
    two)
      run grpo-2gpu-ddp 170 two ddp "${grpo[@]}" --set run_name=two &&
        rows+=("grpo-2gpu-ddp:ddp:$d/two/grpo")
      ;;
    term)
      # Both processes finish the step they are in, save once, exit 143; the same command resumes both.
      term=("${grpo[@]}" --set run_name=term --set "grpo.max_steps=$term_steps" --set grpo.save_steps=1000)
      if stop_at="step 1/$term_steps" run grpo-2gpu-sigterm 170 two ddp "${term[@]}"; then
        # What the stop left, before the rerun adds to it: each checkpoint's files.
        for c in "$d"/term/grpo/checkpoints/checkpoint-*; do
          if [ -d "$c" ]; then echo "$(basename "$c"): $(find "$c" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort | tr '\n' ' ')"; fi
        done >"$out/sigterm-checkpoints.txt"
        run grpo-2gpu-resume 150 two ddp "${term[@]}" || true
      fi
      ;;
    fsdp2)
      run grpo-2gpu-fsdp2 200 two fsdp2 "${grpo[@]}" "${trl[@]}" "${fsdp_optim[@]}" --set run_name=fsdp2 &&
        rows+=("grpo-2gpu-fsdp2:fsdp2:$d/fsdp2/grpo")
      ;;
    one-trl)
      run grpo-1gpu-trl 150 one "${grpo[@]}" "${trl[@]}" "${fsdp_optim[@]}" --set run_name=one-trl &&
        rows+=("grpo-1gpu-trl:single:$d/one-trl/grpo")
      ;;
    sft2)
      run sft-2gpu-ddp 150 two ddp "${sft[@]}" --set run_name=sft2 &&
        rows+=("sft-2gpu-ddp:ddp:$d/sft2/sft")
      ;;
    sft1)
      run sft-1gpu 150 one "${sft[@]}" --set run_name=sft1 &&
        rows+=("sft-1gpu:single:$d/sft1/sft")
      ;;
    *) echo "unknown part '$part' of SCALE_PARTS; use one two term fsdp2 one-trl sft2 sft1" >&2 ;;
    esac
  done

  echo
  echo "== versions and GPUs"
  cat "$out/gpu.txt"
  echo "== runs (exit codes: 0 done, 143 stopped by SIGTERM after saving, 124/137: cut by the cap)"
  for slug in "${!rc[@]}"; do echo "$slug: ${rc[$slug]}"; done | sort
  echo "== throughput (docs/scaling.md reads this table)"
  if ((${#rows[@]})); then
    "$py" benchmarks/scale_summary.py "$out" "${rows[@]}" --pair grpo-1gpu grpo-2gpu-ddp \
      --pair grpo-1gpu-trl grpo-2gpu-fsdp2 --pair sft-1gpu sft-2gpu-ddp | tee "$out/summary.md"
  fi
  if [ -f "$out/grpo-2gpu-sigterm.log" ]; then
    echo "== SIGTERM during 2-GPU GRPO (expected: launcher 143, two stop lines naming one step N, exactly"
    echo "   checkpoint-N with manifest.json and both rng_state files), then the same command (0, resumes from N)"
    echo "launcher exit: ${rc[grpo-2gpu-sigterm]:-}"
    echo "stop lines, by step:"
    grep -o "grpo stopped by SIGTERM after step [0-9]*/[0-9]*" "$out/grpo-2gpu-sigterm.log" | sort | uniq -c || true
    echo "checkpoints after the stop:"
    sed 's/^/  /' "$out/sigterm-checkpoints.txt" 2>/dev/null || true
    grep -h -o -E "launcher: .*|Received [0-9]+ death signal.*|Unable to shutdown.*|forcefully.*" "$out/grpo-2gpu-sigterm.log" | head -5 || true
    echo "rerun exit: ${rc[grpo-2gpu-resume]:-}; $(grep -h -o "resuming from .*" "$out/grpo-2gpu-resume.log" || echo "no resume line")"
    grep -h -o '"global_step": [0-9]*' "$d/term/grpo/run.json" 2>/dev/null | sed 's/^/run.json /' || true
  fi
  echo "== where things went wrong (the first lines that say so in each log)"
  for log in "$out"/*.log; do
    bad=$(grep -E "Traceback|Error|error:|without a CUDA graph|fast rollouts off" "$log" | grep -v "stopped by SIGTERM" \
      | head -3 | cut -c1-240 || true)
    if [ -n "$bad" ]; then printf '%s:\n%s\n' "$(basename "$log")" "$bad"; fi
  done
  ;;
*)
  echo "unknown check '$what'; use tests, bench4b, fastpath, speed, vllm, vllm-bench or scale" >&2
  exit 2
  ;;
esac
