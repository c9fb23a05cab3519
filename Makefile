# Everything a fresh machine needs: `make demo` (the main job) and `make test`. Both create .venv first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch, installed before anything else so no dependency drags in a multi-GB CUDA build.
# Elsewhere, e.g.: make TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup test demo clean

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

clean:
	rm -rf $(VENV) build dist src/*.egg-info
