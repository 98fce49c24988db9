"""Smoke test of benchmarks/bench_ttt_lm.py: a ``--quick`` run on tiny sizes completes and reports every row.

No timing assertions: only that each requested row was measured and the JSON/table/targets are well formed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--quick", "--hidden", "32", "--heads", "2", "--layers", "1", "--vocab", "64", "--intermediate", "64",
        "--lengths", "48", "--positions", "8,40", "--threads", "1"]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_ttt_lm", ROOT / "benchmarks" / "bench_ttt_lm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_ttt_lm"] = module
    spec.loader.exec_module(module)
    return module


def _official_available() -> bool:
    """The authors' ttt.py at /tmp/ttt_official.py and a transformers it loads under (4.x: it fails in
    ``post_init`` under transformers 5)."""
    if not Path("/tmp/ttt_official.py").is_file() or importlib.util.find_spec("transformers") is None:
        return False
    return int(importlib.metadata.version("transformers").split(".")[0]) < 5


@pytest.mark.parametrize("models", [
    "ttt_linear,ttt_mlp,attention,mamba_torch",
    pytest.param("ttt_linear,official_linear", marks=pytest.mark.skipif(
        not _official_available(), reason="needs /tmp/ttt_official.py and transformers 4.x")),
])
def test_quick_run(tmp_path, capsys, models):
    bench = _load_bench()
    out = tmp_path / "bench.json"
    assert bench.main([*TINY, "--models", models, "--json", str(out)]) == 0
    blob = json.loads(out.read_text())
    assert blob["env"]["threads"] == 1 and blob["env"]["torch"]
    assert blob["size"]["intermediate"] == 64
    rows = blob["rows"]
    want = {(m, mode, L) for m in models.split(",") for mode, L in [("fwd", 48), ("train", 48), ("decode", 8),
                                                                      ("decode", 40)]}
    got = {(r["model"], r["mode"], r["L"]) for r in rows if r["seconds"]}
    assert want == got, f"missing rows: {want - got}; notes: {[r['note'] for r in rows if r['note']]}"
    assert all(r["tokens_per_s"] > 0 for r in rows)
    assert all(r["extra"]["gflops"] > 0 for r in rows if r["mode"] == "fwd")
    assert {t["status"] for t in blob["targets"]} <= {"met", "NOT met", "not measured"}
    text = capsys.readouterr().out
    assert "| L | B |" in text and "targets:" in text


def test_defaults_and_quick_flags():
    bench = _load_bench()
    args = bench.parse_args([])
    assert args.lengths == [512, 2048, 8192] and args.batches == [1, 4] and args.positions == [1024, 4096, 16384]
    assert args.threads == 2
    assert bench.Size().intermediate == 768  # Llama's rule at hidden 256
    quick = bench.parse_args(["--quick"])
    assert quick.lengths == [128] and quick.repeats == 2
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "gpt5"])


def test_flop_counts():
    bench = _load_bench()
    size = bench.Size()
    # Attention grows quadratically, TTT linearly, in L.
    a1, a2 = bench.mixer_flops("attention", 1024, size), bench.mixer_flops("attention", 2048, size)
    t1, t2 = bench.mixer_flops("ttt_linear", 1024, size), bench.mixer_flops("ttt_linear", 2048, size)
    assert a2 / a1 > 2.1 and t2 / t1 == pytest.approx(2.0)
    assert bench.mixer_flops("ttt_mlp", 1024, size) > t1
    assert bench.forward_flops("ttt_linear", 1024, 4, size) == pytest.approx(4 * bench.forward_flops(
        "ttt_linear", 1024, 1, size))
