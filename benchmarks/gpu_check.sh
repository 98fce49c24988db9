#!/usr/bin/env bash
# One prepared GPU run for issue 11 (shared/docs/gpu.md §3), within a global budget of BUDGET seconds (default 540;
# each step gets at most its own limit and what is left), everything written under $OUT as it goes (a time-out still
# leaves what was measured). In order: the TTT-Linear op benchmark (ours, our PyTorch dual form, fla, SDPA), the TTT-MLP
# op benchmark next to our TTT-Linear kernel, the gpu-marked tests of both kernels, Mamba's sequential vs chunked
# selective scan (benchmark + gpu tests), then the LM decode tests (CUDA graphs) and the LM-level benchmark
# (benchmarks/gpu_lm.py: every mixer, 4 layers, width 768, bf16).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # from the repository root, on a CUDA machine
#   OUT=/some/dir ONLY="mlp-tests lm" BUDGET=200 bash benchmarks/gpu_check.sh   # rerun only the steps that failed
#
# Optional: wheels in .whl/ (fla-core 0.6.0 and einops, for the comparison with fla's chunk_ttt_linear; get them with
# `pip download --no-deps -d .whl fla-core==0.6.0 einops`) are installed with pip --no-index into .whl/site, which
# goes on PYTHONPATH (the GPU machine has no package index; .whl is git-ignored, so carry it with the run:
# run(command="OUT=$OUT bash benchmarks/gpu_check.sh", carry=[".whl"])).
# Written without a GPU: this script has not run on one yet.
set -u
OUT=${OUT:-gpu_out}
PY=${PYTHON:-$(command -v python || command -v python3)}
BENCH_ARGS=${BENCH_ARGS:-}  # e.g. "--smoke" to try this script on a CPU machine
# ONLY="scan lm" runs just those steps (a targeted rerun with what is left of the device time); default: every step.
# Steps: ttt mlp ttt-tests mlp-tests scan scan-tests decode-tests lm
ONLY=${ONLY:-}
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
[ -z "$BENCH_ARGS" ] && unset TRITON_INTERPRET
start=$(date +%s)
BUDGET=${BUDGET:-540}
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_check.log"; }
# seconds a step may take: its own limit, or what is left of the budget if less (at least 1)
limit() { local left=$(( BUDGET - ($(date +%s) - start) )); [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"; }

if compgen -G ".whl/*.whl" > /dev/null; then
  log "installing carried wheels into .whl/site"
  $PY -m pip install --no-index --no-deps -q --target .whl/site .whl/*.whl > "$OUT/pip.txt" 2>&1 \
    || log "pip failed (see pip.txt)"
  export PYTHONPATH="$PYTHONPATH:$PWD/.whl/site"
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
$PY - > "$OUT/versions.txt" 2>&1 <<'PYEOF'
import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else None)
for p in ("triton", "fla-core", "flash-linear-attention", "einops"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, None)
PYEOF
log "versions: $(tr '\n' ' ' < "$OUT/versions.txt")"
if [ -z "$BENCH_ARGS" ] && ! $PY -c "import sys, torch; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
  log "error: no CUDA device here (or no torch in $PY): run this on a GPU machine; BENCH_ARGS=--smoke tries it on a CPU"
  exit 2
fi

if want ttt; then
log "benchmark (op level, bf16, H=12, D=64, 32768 tokens per batch)"
# shellcheck disable=SC2086
timeout "$(limit 130)" $PY benchmarks/gpu_ttt.py --out "$OUT/gpu_ttt.jsonl" $BENCH_ARGS > "$OUT/gpu_ttt.txt" 2>&1
log "benchmark exit $?"
fi

# TTT-MLP kernels (never run on a GPU before): a correctness check row, then fwd and fwd+bwd of mlp_triton,
# mlp_triton_fused and mlp_chunk next to our TTT-Linear kernel (same run, same inputs); the target is TTT-MLP
# fwd+bwd within 4x of it
if want mlp; then
log "TTT-MLP benchmark (mlp_triton, mlp_triton_fused, mlp_chunk; triton = our TTT-Linear kernel)"
# shellcheck disable=SC2086
timeout "$(limit 60)" $PY benchmarks/gpu_ttt.py --paths triton,mlp_triton,mlp_triton_fused,mlp_chunk \
  --repeats 5 --max-seconds 3 --out "$OUT/gpu_ttt_mlp.jsonl" $BENCH_ARGS > "$OUT/gpu_ttt_mlp.txt" 2>&1
log "TTT-MLP benchmark exit $?"
fi

if want ttt-tests; then
log "gpu-marked tests (TTT-Linear Triton kernels and dispatch)"
timeout "$(limit 60)" $PY -m pytest -q -x -m gpu tests/ops/test_ttt_triton.py -p no:cacheprovider \
  --junitxml="$OUT/pytest_gpu.xml" > "$OUT/pytest_gpu.txt" 2>&1
log "gpu tests exit $?"
tail -n 5 "$OUT/pytest_gpu.txt" | tee -a "$OUT/gpu_check.log"
fi

# (each new (dtype, head dim, offset) case compiles four TTT-MLP kernels; the bf16 D=64 ones are cached by the
# benchmark above; if this step times out, rerun it alone with a larger BUDGET)
if want mlp-tests; then
log "gpu-marked tests (TTT-MLP Triton kernels and dispatch)"
timeout "$(limit 50)" $PY -m pytest -q -m gpu tests/ops/test_ttt_triton_mlp.py -p no:cacheprovider \
  --junitxml="$OUT/pytest_gpu_mlp.xml" > "$OUT/pytest_gpu_mlp.txt" 2>&1
log "gpu tests (TTT-MLP) exit $?"
tail -n 5 "$OUT/pytest_gpu_mlp.txt" | tee -a "$OUT/gpu_check.log"
fi

# ---- Mamba's selective scan (issue 11 item 5): sequential vs chunked Triton scan ------------------------------------
if want scan; then
log "selective scan benchmark (bf16 u/B/C, E=1536, N=16, 32768 tokens per batch, L=2k/8k/32k)"
# shellcheck disable=SC2086
timeout "$(limit 55)" $PY benchmarks/bench_selective_scan.py --cuda --out "$OUT/gpu_scan.jsonl" \
  $BENCH_ARGS > "$OUT/gpu_scan.txt" 2>&1
log "scan benchmark exit $?"
fi
if want scan-tests; then
timeout "$(limit 25)" $PY -m pytest -q -x -m gpu tests/ops/test_selective_scan_chunked.py \
  tests/ops/test_selective_scan_triton.py -p no:cacheprovider --junitxml="$OUT/pytest_gpu_scan.xml" \
  > "$OUT/pytest_gpu_scan.txt" 2>&1
log "scan gpu tests exit $?"
tail -n 5 "$OUT/pytest_gpu_scan.txt" | tee -a "$OUT/gpu_check.log"
fi

# ---- LM decode (CUDA graphs over static state) and LM-level benchmark (issue 11 items 4 and 6): at most 160 s ----
if want decode-tests; then
log "gpu-marked decode tests (graph-captured generate equals eager, every mixer) + GPU resume, optimizer and RL² pairing tests"
timeout "$(limit 50)" $PY -m pytest -q -m gpu tests/models/test_lm_decoding.py tests/runs/test_loop.py \
  tests/optim/test_torch_optim.py tests/rl/test_rl2_trainer.py -p no:cacheprovider \
  --junitxml="$OUT/pytest_gpu_decode.xml" > "$OUT/pytest_gpu_decode.txt" 2>&1
log "decode tests exit $?"
tail -n 5 "$OUT/pytest_gpu_decode.txt" | tee -a "$OUT/gpu_check.log"
fi
if want lm; then
log "benchmark (LM level: 4 layers, width 768, every mixer, bf16: decode, fwd, train; rows say which scan ran)"
# shellcheck disable=SC2086
timeout "$(limit 110)" $PY benchmarks/gpu_lm.py --out "$OUT/gpu_lm.jsonl" --budget 85 $BENCH_ARGS > "$OUT/gpu_lm.txt" 2>&1
log "lm benchmark exit $?"
fi
# ---- end of the LM section ----

log "done"
