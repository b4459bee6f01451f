# make help lists the targets. Stages run in the container by default (RUNNER=docker);
# RUNNER=local runs them in .venv. CONFIG picks a recipe, SET="a.b=1 c=x" overrides keys.
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
STAGE_ARGS = --config $(CONFIG) $(foreach s,$(SET),--set $(s))

.PHONY: help setup demo test test-gpu lint build sft grpo eval infer export shell lock bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z][a-z -]*:.*## / {printf "  make %-26s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: RUNNER=docker|local  CONFIG=configs/<recipe>.yaml  SET=\"a.b=1 c=x\"  PROMPT=\"...\""

setup: $(VENV)/.installed ## create .venv with the CPU stack (torch 2.13.0 CPU)

# Torch first, from the CPU index: PyPI's torch wheel is the CUDA build (GBs).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	PIP_RETRIES=1 $(VPY) -m pip install -q --extra-index-url $(TORCH_CPU_INDEX) "torch==2.13.0+cpu"
	$(VPY) -m pip install -q -e ".[dev]"
	@touch $@

demo: setup ## the whole pipeline (sft -> grpo -> eval -> infer) on the tiny model, CPU, no Docker
	$(VPY) -m trainer demo --config configs/tiny.yaml $(foreach s,$(SET),--set $(s))

test: setup ## the test suite
	$(VPY) -m pytest -q -ra

test-gpu: setup ## the GPU tests only (skip without CUDA)
	$(VPY) -m pytest -q -ra -m gpu

lint: setup ## ruff, shellcheck, hadolint, compose config
	$(VPY) -m ruff check src tests
	$(VPY) -m ruff format --check src tests

build: ## build the image from docker/Dockerfile
	$(COMPOSE) build

sft grpo eval export: ## run one stage (in the container, or RUNNER=local)
ifeq ($(RUNNER),local)
	$(MAKE) setup
	$(VPY) -m trainer $@ $(STAGE_ARGS)
else
	$(COMPOSE) run --rm $@ $(STAGE_ARGS)
endif

infer: ## answer PROMPT="..." with the latest adapter
ifeq ($(RUNNER),local)
	$(MAKE) setup
	$(VPY) -m trainer infer $(STAGE_ARGS) $(if $(PROMPT),--prompt "$(PROMPT)")
else
	$(COMPOSE) run --rm infer $(STAGE_ARGS) $(if $(PROMPT),--prompt "$(PROMPT)")
endif

shell: ## a shell in the container
	$(COMPOSE) run --rm --entrypoint bash sft

clean: ## remove .venv and local checkpoints
	rm -rf $(VENV) checkpoints .cache
