# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv, install a CPU build of torch first (so pip never pulls a multi-GB CUDA build),
# then install innerloop in editable mode with the extras they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0

.PHONY: setup demo test test-slow test-kernels-triton lint bench

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

# Every Triton kernel test (default and slow: interpreter runs, sm_90 ahead-of-time compiles) under another Triton
# release, in its own venv: the GPU machine of shared/docs/gpu.md has Triton 3.6 (3.6's interpreter needs numpy < 2.4).
KERNEL_TRITON ?= 3.6.0
KERNEL_VENV := .venv-triton$(KERNEL_TRITON)
KERNEL_TESTS := tests/ops/test_ttt_triton.py tests/ops/test_ttt_triton_mlp.py tests/ops/test_selective_scan_triton.py \
	tests/ops/test_selective_scan_chunked.py tests/ops/test_triton_bounds.py
test-kernels-triton:
	test -x $(KERNEL_VENV)/bin/python || $(PY) -m venv $(KERNEL_VENV)
	$(KERNEL_VENV)/bin/python -m pip install -q torch==$(TORCH_VERSION) triton==$(KERNEL_TRITON) "numpy<2.4" \
		safetensors tqdm matplotlib pytest pytest-timeout
	$(KERNEL_VENV)/bin/python -m pip install -q --no-deps -e .
	$(KERNEL_VENV)/bin/python -m pytest -q -m "not gpu" -W ignore::DeprecationWarning $(KERNEL_TESTS)

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_ttt_lm.py --models ttt_linear,ttt_mlp,attention
	$(BIN)/python benchmarks/bench_selective_scan.py --threads 2
