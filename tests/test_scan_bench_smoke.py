"""Smoke test of ``benchmarks/bench_selective_scan.py --cuda`` (``--smoke``: tiny shapes on the CPU in Triton's
interpreter): every path is checked against the PyTorch scan and timed, or its row says why not. No timing
assertions."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _load():
    path = ROOT / "benchmarks" / "bench_selective_scan.py"
    spec = importlib.util.spec_from_file_location("bench_selective_scan", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_selective_scan"] = module
    spec.loader.exec_module(module)
    return module


def test_cuda_mode_smoke(tmp_path):
    pytest.importorskip("triton")
    bench = _load()
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--cuda", "--smoke", "--paths", "chunked,torch", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["kind"] == "env" and rows[0]["triton"]
    checks = [r for r in rows if r["kind"] == "check"]
    assert {r["path"] for r in checks} == {"chunked_c4", "torch"}
    for r in checks:  # bf16 u, B, C: y and du are rounded to bf16; the state and dA stay float32
        assert r["rel_err"]["h"] < 1e-5 and max(r["rel_err"].values()) < 2e-2
    times = {(r["path"], r["mode"]) for r in rows if r["kind"] == "time" and r["ms_median"] > 0}
    assert times == {(p, m) for p in ("chunked_c4", "torch") for m in ("fwd", "fwdbwd")}


def test_cuda_defaults():
    args = _load().parse_cuda_args([])
    assert args.lengths == [2048, 8192, 32768] and args.tokens == 32768 and args.channels == 1536
    assert args.paths == ["sequential", "chunked", "torch"]
    with pytest.raises(SystemExit):
        _load().parse_cuda_args(["--paths", "mamba_cuda"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a CUDA device")
def test_cuda_mode_refuses_without_cuda(tmp_path, capsys):
    """``--cuda`` without ``--smoke`` on a CPU machine wrote an env row saying "cpu (interpreter)" and failed every
    row with a traceback; it now stops with one line."""
    out = tmp_path / "rows.jsonl"
    argv = ["--cuda", "--lengths", "8", "--tokens", "8", "--channels", "2", "--d-state", "2", "--chunks", "4",
            "--paths", "torch", "--repeats", "1", "--out", str(out)]  # fmt: skip
    assert _load().main(argv) == 2
    assert "--cuda: error: no CUDA device here" in capsys.readouterr().err and not out.exists()
