"""``innerloop demo``: the inference-cost part and the package check before any work (tiny sizes, tmp dirs, seconds).

The training part and the quality table are covered by ``test_lm_cli.py::test_demo_quick``.
"""

from __future__ import annotations

import importlib.util
import json

from innerloop.cli.main import main


def test_demo_quick_inference_cost(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    rows = json.loads((out / "results.json").read_text())
    ttt, attn = rows[0]["speed"], rows[1]["speed"]
    assert [r["context"] for r in ttt] == [r["context"] for r in attn] == [32, 64]  # the --quick contexts
    # TTT-Linear's decode state is the same size at every context; the Transformer's KV cache grows with it
    assert ttt[0]["state_bytes"] == ttt[1]["state_bytes"] and attn[1]["state_bytes"] == 2 * attn[0]["state_bytes"]
    assert all(r["forward_tokens_per_s"] > 0 and r["decode_ms_per_token"] > 0 for r in ttt + attn)
    assert "[4/4] inference cost" in text and "What it measures" in text
    md = (out / "results.md").read_text()
    assert "| TTT-Linear |" in md and "## Inference cost at growing context" in md and "| 64 |" in md


def test_demo_speed_contexts(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--steps", "1", "--speed-contexts", "--out", str(out), "--no-progress"]) == 0
    assert "speed" not in json.loads((out / "results.json").read_text())[0] and "[3/3]" in capsys.readouterr().out
    assert main(["demo", "--quick", "--speed-contexts", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--speed-contexts must be positive" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_demo_checks_packages_first(tmp_path, monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    missing = {"safetensors", "matplotlib", "tqdm"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else find_spec(name, *a))
    # without safetensors the first checkpoint would fail: stop before any work, saying how to get it
    assert main(["demo", "--quick", "--out", str(tmp_path / "a")]) == 2
    assert "pip install safetensors" in capsys.readouterr().err and not (tmp_path / "a").exists()
    # without tqdm / matplotlib: say up front what is skipped, then run to the end
    missing.remove("safetensors")
    assert main(["demo", "--quick", "--steps", "1", "--speed-contexts", "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "no progress bars" in err and "pip install tqdm" in err and "no loss_curves.png" in err
    assert not (tmp_path / "b" / "loss_curves.png").exists() and (tmp_path / "b" / "results.md").exists()
