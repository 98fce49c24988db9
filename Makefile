# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv, install a CPU build of torch first (so pip never pulls a multi-GB CUDA build),
# then install innerloop in editable mode with the extras they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-slow lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e ".[train,plot,vision,bpe,rl,mujoco,hf,triton,optim,dev]"

demo: setup
	$(BIN)/python -m innerloop demo

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_ttt_lm.py --models ttt_linear,ttt_mlp,attention
	$(BIN)/python benchmarks/bench_selective_scan.py --threads 2
