"""Smoke test of benchmarks/gpu_lm.py (``--smoke``: a tiny LM of every mixer on the CPU). No timing assertions: every
row is measured or says why not (the CUDA-graph rows need a GPU)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent


def _load():
    spec = importlib.util.spec_from_file_location("gpu_lm", ROOT.parent / "benchmarks" / "gpu_lm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_lm"] = module
    spec.loader.exec_module(module)
    return module


def test_smoke_run(tmp_path):
    bench = _load()
    out = tmp_path / "rows.jsonl"
    assert bench.main(["--smoke", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    env, rows = rows[0], rows[1:]
    assert env["kind"] == "env" and env["torch"] and env["model"]["layers"] == 2
    assert not [r for r in rows if "error" in r and r.get("way") != "graph"]
    got = {(r["kind"], r["mixer"], r.get("way")) for r in rows if "error" not in r}
    for mixer in bench.MIXERS:
        assert {("decode", mixer, "eager"), ("decode", mixer, "static"), ("fwd", mixer, None),
                ("train", mixer, None)} <= got
    assert all(r["ms_per_token"] > 0 for r in rows if r["kind"] == "decode" and "error" not in r)
    assert all(r["tokens_per_s"] > 0 for r in rows if r["kind"] in ("fwd", "train"))


def test_rows_say_which_scan_ran(monkeypatch):
    """On CUDA the TTT and Mamba rows record whether the Triton kernel ran or the fallback (and why): a self-check
    failed under the benchmark's bf16 autocast made every such row time the PyTorch fallback, unlabelled."""
    from innerloop.ops.selective_scan import fused
    from innerloop.ops.ttt import dispatch

    bench = _load()
    seen = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(dispatch, "triton_linear_unavailable", lambda d: seen.append(str(d)))
    monkeypatch.setattr(dispatch, "triton_mlp_unavailable", lambda d: "the kernel failed its self-check: boom")
    monkeypatch.setattr(fused, "fused_scan_unavailable", lambda d: None)
    cuda = torch.device("cuda")
    assert bench.kernel_path("ttt_linear", cuda) == "triton" and seen == ["cuda:0"]  # the dispatch's cache key
    assert bench.kernel_path("ttt_mlp", cuda) == "fallback: the kernel failed its self-check: boom"
    assert bench.kernel_path("mamba", cuda) == "triton"
    assert bench.kernel_path("attention", cuda) is None and bench.kernel_path("ttt_linear", torch.device("cpu")) is None


def test_defaults_and_budget(tmp_path):
    bench = _load()
    args = bench.parse_args([])
    assert (args.layers, args.hidden, args.heads, args.vocab, args.dtype) == (4, 768, 12, 32000, "bf16")
    assert args.lengths == [2048, 32768, 8192] and args.positions == [1024, 16384, 4096]
    assert args.mixers == list(bench.MIXERS)
    with pytest.raises(SystemExit):
        bench.parse_args(["--mixers", "transformer"])
    out = tmp_path / "rows.jsonl"  # a spent budget skips every row, and says so
    assert bench.main(["--smoke", "--budget", "0", "--mixers", "gru", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()][1:]
    assert rows and all("error" in r for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal without a CUDA device")
def test_refuses_without_cuda(tmp_path, capsys):
    """Without ``--smoke`` on a CPU machine it ran the 4-layer width-768 model on the CPU until its budget (3 min);
    tiny sizes here, so that the old behaviour (rows measured on the CPU, exit 0) fails fast."""
    out = tmp_path / "rows.jsonl"
    argv = ["--mixers", "gru", "--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "64", "--vocab",
            "64", "--lengths", "16", "--tokens", "16", "--positions", "8", "--decode-tokens", "2", "--repeats", "1",
            "--out", str(out)]  # fmt: skip
    assert _load().main(argv) == 2
    assert "gpu_lm.py: error: no CUDA device here" in capsys.readouterr().err and not out.exists()
