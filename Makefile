# Everything a fresh machine needs: `make demo` (the main job), `make test` and `make bench`. All create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before anything else so no dependency drags in a multi-GB CUDA build.
# Elsewhere, e.g.: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# e.g. make bench BENCH_ARGS="--only scoring --repeats 1"
BENCH_ARGS ?=

.PHONY: setup test demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "== set-up: creating $(VENV), installing $(TORCH_SPEC) then maml-en-llm[dev]"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/python -m maml_en_llm.demo

# The benchmark-only extra (lm-evaluation-harness, the reference scorer) on top of the dev install.
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

# Scoring vs lm-evaluation-harness and naive scoring, BIG-bench build time, meta-step cost: docs/benchmarks.md.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info
