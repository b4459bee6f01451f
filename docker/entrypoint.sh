#!/usr/bin/env bash
# The image's entry point: docker/entrypoint.sh <stage> [--config FILE] [--set key=value ...]
# compose.yaml fixes the stage per service (`docker compose run --rm sft --config ...`), so the
# arguments after the service name go straight to `python -m trainer <stage>`.
#
# Before any Python starts it checks what a GPU stage needs and says what is missing, instead of
# a CUDA traceback ten imports deep. TRAINER_REQUIRE_GPU=0 skips the check (CPU recipes such as
# configs/tiny.yaml, and the container test).
set -euo pipefail

# CUDA 13.0 (the base image and torch's cu13 wheels) needs at least this driver branch.
MIN_DRIVER="${TRAINER_MIN_DRIVER:-580}"

# Exit 2, as the trainer does for bad input (README's exit-code table): everything stopped here is
# the machine or the command line, not a bug.
die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

usage() {
    echo "usage: docker/entrypoint.sh {sft|grpo|eval|infer|export|demo} [--config FILE] [--set key=value ...]"
    echo "       (make sft / make grpo / make infer PROMPT=... run these through compose.yaml)"
}

check_gpu() {
    if ! command -v nvidia-smi >/dev/null 2>&1; then
        die "no GPU visible in the container (nvidia-smi is missing: the NVIDIA driver was not mounted in).
  - On the host, 'nvidia-smi' must work (an NVIDIA driver >= ${MIN_DRIVER} is installed), and the
    NVIDIA Container Toolkit must be installed and registered with Docker:
      sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker
    (docs/gpu-vm.md has every step).
  - Start stages with 'make <stage>' or 'docker compose run --rm <stage>': compose.yaml reserves
    the GPU. With plain 'docker run', add '--gpus all'.
  - For a CPU-only recipe (configs/tiny.yaml) set TRAINER_REQUIRE_GPU=0."
    fi
    local info
    if ! info="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1)"; then
        die "nvidia-smi is present but failed; the host driver or the container toolkit is broken:
${info}"
    fi
    if [[ -z "${info}" ]]; then
        die "nvidia-smi lists no GPU. Check NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES and the GPU reservation in compose.yaml."
    fi
    local driver="${info##*, }"
    driver="${driver%%$'\n'*}"
    if [[ "${driver%%.*}" =~ ^[0-9]+$ ]] && ((${driver%%.*} < MIN_DRIVER)); then
        die "the NVIDIA driver ${driver} is too old for this image (CUDA 13.0 needs >= ${MIN_DRIVER}).
  Upgrade the host driver (docs/gpu-vm.md), or rebuild the image for an older CUDA:
  BASE_IMAGE and requirements.lock must then match it."
    fi
    echo "GPU: ${info//$'\n'/; }" >&2
}

check_volume() {
    local dir="${CHECKPOINT_DIR:-/checkpoints}"
    mkdir -p "${dir}" 2>/dev/null || true
    if [[ ! -w "${dir}" ]]; then
        die "CHECKPOINT_DIR ${dir} is not writable by uid $(id -u). A bind mount must be owned by that uid
  (sudo chown -R $(id -u) <host dir>); the named volume in compose.yaml needs nothing."
    fi
}

stage="${1:-}"
case "${stage}" in
    sft | grpo | eval | infer | export | demo) shift ;;
    -h | --help | "")
        usage
        exec python -m trainer --help
        ;;
    *)
        usage >&2
        die "unknown stage '${stage}'"
        ;;
esac

if [[ "${TRAINER_REQUIRE_GPU:-1}" != "0" ]]; then
    check_gpu
fi
check_volume
# Several processes (make GPUS=N / NNODES=M, docs/scaling.md): the Makefile hands over the
# `accelerate launch` flags, which hold no spaces inside a flag. trainer.launch is accelerate launch
# with the stages' exit codes, and it lets docker stop's SIGTERM reach every process for a checkpoint.
if [[ -n "${TRAINER_ACCELERATE_ARGS:-}" ]]; then
    read -r -a accelerate_args <<<"${TRAINER_ACCELERATE_ARGS}"
    exec python -m trainer.launch "${accelerate_args[@]}" -m trainer "${stage}" "$@"
fi
exec python -m trainer "${stage}" "$@"
