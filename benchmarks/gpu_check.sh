#!/usr/bin/env bash
# One prepared GPU run for issue 11 (shared/docs/gpu.md §3): the TTT-Linear op benchmark, then the gpu-marked tests,
# then the LM decode tests and the LM-level benchmark (benchmarks/gpu_lm.py),
# in about 8 minutes, everything written under $OUT as it goes (a time-out still leaves what was measured).
#
#   OUT=/some/dir bash benchmarks/gpu_check.sh        # from the repository root, on a CUDA machine
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
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_DEFAULT_FP_FUSION=${TRITON_DEFAULT_FP_FUSION:-1}
[ -z "$BENCH_ARGS" ] && unset TRITON_INTERPRET
start=$(date +%s)
log() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/gpu_check.log"; }

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

log "benchmark (op level, bf16, H=12, D=64, 32768 tokens per batch)"
# shellcheck disable=SC2086
timeout 300 $PY benchmarks/gpu_ttt.py --out "$OUT/gpu_ttt.jsonl" $BENCH_ARGS > "$OUT/gpu_ttt.txt" 2>&1
log "benchmark exit $?"

log "gpu-marked tests (TTT Triton kernels and dispatch)"
timeout 150 $PY -m pytest -q -x -m gpu tests/ops/test_ttt_triton.py -p no:cacheprovider \
  --junitxml="$OUT/pytest_gpu.xml" > "$OUT/pytest_gpu.txt" 2>&1
log "gpu tests exit $?"
tail -n 5 "$OUT/pytest_gpu.txt" | tee -a "$OUT/gpu_check.log"

# ---- LM decode (CUDA graphs over static state) and LM-level benchmark (issue 11 items 4 and 6): <= 3 minutes ----
log "gpu-marked decode tests (graph-captured generate equals eager, every mixer)"
timeout 60 $PY -m pytest -q -m gpu tests/models/test_lm_decoding.py -p no:cacheprovider \
  --junitxml="$OUT/pytest_gpu_decode.xml" > "$OUT/pytest_gpu_decode.txt" 2>&1
log "decode tests exit $?"
tail -n 5 "$OUT/pytest_gpu_decode.txt" | tee -a "$OUT/gpu_check.log"
log "benchmark (LM level: 4 layers, width 768, every mixer, bf16: decode eager/static/graph, fwd, train)"
# shellcheck disable=SC2086
timeout 120 $PY benchmarks/gpu_lm.py --out "$OUT/gpu_lm.jsonl" --budget 95 $BENCH_ARGS > "$OUT/gpu_lm.txt" 2>&1
log "lm benchmark exit $?"
# ---- end of the LM section ----

log "done"
