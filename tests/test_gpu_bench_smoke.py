"""Smoke test of benchmarks/gpu_ttt.py (``--smoke``: tiny shapes on the CPU in Triton's interpreter) and of the shell
script that runs it on a GPU machine. No timing assertions: every row is measured or says why not."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load():
    spec = importlib.util.spec_from_file_location("gpu_ttt", ROOT / "benchmarks" / "gpu_ttt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_ttt"] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_run(tmp_path):
    pytest.importorskip("triton")
    bench = _load()
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    env, check, times = rows[0], rows[1], rows[2:]
    assert env["kind"] == "env" and env["torch"] and env["interpreter"]
    assert check["kind"] == "check" and max(v for k, v in check.items() if k.startswith("d") or k == "o") < 1e-5
    want = {(p, m) for p in ("triton", "triton_fused", "chunk", "sdpa") for m in ("fwd", "fwdbwd")}
    assert want <= {(r["path"], r["mode"]) for r in times if r.get("ms_median", 0) > 0}
    assert all("error" in r or r["ms_median"] > 0 for r in times)  # fla: measured, or "not importable"
    from innerloop.ops.ttt import triton_linear

    assert triton_linear.FORWARD == triton_linear.BACKWARD == "split"  # triton_fused's switches were put back


@pytest.mark.slow
def test_smoke_run_mlp(tmp_path):
    """The TTT-MLP rows (``--paths mlp_triton,mlp_chunk``, with our TTT-Linear kernel next to them)."""
    pytest.importorskip("triton")
    bench = _load()
    out = tmp_path / "rows.jsonl"
    paths = "triton,mlp_triton,mlp_triton_fused,mlp_chunk"
    argv = ["--smoke", "--paths", paths, "--modes", "fwdbwd", "--out", str(out)]
    assert bench.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    checks = {r["op"]: r for r in rows if r["kind"] == "check"}
    assert set(checks) == {"ttt_linear", "ttt_mlp"}
    assert max(v for k, v in checks["ttt_mlp"].items() if k.startswith("d") or k == "o") < 1e-5
    times = {(r["path"], r["mode"]) for r in rows if r["kind"] == "time" and r.get("ms_median", 0) > 0}
    assert times == {(p, "fwdbwd") for p in ("triton", "mlp_triton", "mlp_triton_fused", "mlp_chunk")}
    from innerloop.ops.ttt import triton_mlp

    assert triton_mlp.FORWARD == triton_mlp.BACKWARD == "split"  # mlp_triton_fused's switches were put back


def test_defaults():
    bench = _load()
    args = bench.parse_args([])
    assert args.lengths == [2048, 8192, 32768] and args.tokens == 32768 and (args.heads, args.dim) == (12, 64)
    assert args.dtype == "bf16" and args.paths == ["triton", "triton_tf32", "triton_fused", "chunk", "fla", "sdpa"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--paths", "flash"])


def test_gpu_check_script_parses():
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a CUDA device")
def test_refuses_without_cuda(tmp_path, capsys):
    """Without ``--smoke`` on a CPU machine it ran the GPU sizes on the CPU for many minutes (the default run passed
    5 minutes); tiny sizes here, so that the old behaviour (rows measured on the CPU, exit 0) fails fast."""
    out = tmp_path / "rows.jsonl"
    argv = ["--lengths", "64", "--tokens", "64", "--heads", "1", "--dim", "16", "--paths", "chunk", "--modes", "fwd",
            "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert _load().main(argv) == 2
    assert "gpu_ttt.py: error: no CUDA device here" in capsys.readouterr().err and not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a CUDA device")
def test_gpu_check_script_stops_without_cuda(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "BENCH_ARGS": "", "BUDGET": "30"}
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no CUDA device here" in r.stdout and not (tmp_path / "gpu_ttt.txt").exists()


def test_gpu_check_script_runs_only_the_steps_asked_for(tmp_path):
    """ONLY="..." (a targeted rerun with what is left of the device time) runs just those steps."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable, "BENCH_ARGS": "--smoke", "BUDGET": "60",
           "ONLY": "scan-tests"}  # fmt: skip
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    log = (tmp_path / "gpu_check.log").read_text()
    assert "scan gpu tests exit" in log and "done" in log
    assert "benchmark (op level" not in log and "decode tests" not in log and not (tmp_path / "gpu_ttt.txt").exists()
