"""innerloop.eval.speed: exact decode-state sizes (KV cache vs TTT state), the measurement rows and the table."""

from __future__ import annotations

import pytest
import torch

from innerloop.eval.speed import format_speed_table, measure_speed, state_bytes
from innerloop.models.lm import CausalLM, LMConfig


def tiny(mixer: str, **kw) -> CausalLM:
    cfg = LMConfig(vocab_size=99, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   mixer=mixer, mini_batch_size=4, **kw)  # fmt: skip
    return CausalLM(cfg).eval()


@torch.no_grad()
def test_state_bytes_exact():
    attn, ttt = tiny("attention"), tiny("ttt_linear")
    ids = torch.randint(0, 99, (2, 13))
    # KV cache: keys and values [B, H, L, D] per layer, float32, valid positions only
    assert state_bytes(attn(ids).state) == 2 * 2 * (2 * 4 * 13 * 8) * 4
    state = attn(ids[:, :1], attn(ids).state).state  # after a step the buffer has spare capacity: not counted
    assert state.layers[0].mixer.k.shape[2] > 14 and state_bytes(state) == 2 * 2 * (2 * 4 * 14 * 8) * 4
    # TTT-Linear: inner model (W [B, H, D, D], b [B, H, D]) and its pending gradient, per layer; the same at every L
    per_layer = 2 * 2 * (4 * 8 * 8 + 4 * 8) * 4
    assert state_bytes(ttt(ids).state) == state_bytes(ttt(ids[:, :3]).state) == 2 * per_layer


def test_state_bytes_walks_containers_and_refuses_unknowns():
    state = {"a": torch.zeros(3, dtype=torch.float16), "b": [torch.zeros(2, dtype=torch.int64), None, 7]}
    assert state_bytes(state) == 3 * 2 + 2 * 8
    with pytest.raises(TypeError, match="cannot size a object"):
        state_bytes(object())


def test_measure_speed():
    results = measure_speed({"ttt": tiny("ttt_linear"), "attn": tiny("attention")}, [8, 21], repeats=1, decode_steps=2)
    assert list(results) == ["ttt", "attn"]
    for rows in results.values():
        assert [r["context"] for r in rows] == [8, 21]
        for r in rows:
            assert r["forward_seconds"] > 0 and r["decode_ms_per_token"] > 0 and r["state_bytes"] > 0
            assert r["forward_tokens_per_s"] == pytest.approx(r["context"] / r["forward_seconds"])
    ttt, attn = results["ttt"], results["attn"]
    assert ttt[0]["state_bytes"] == ttt[1]["state_bytes"] == state_bytes(tiny("ttt_linear").init_state(1))
    assert attn[1]["state_bytes"] == attn[0]["state_bytes"] * 21 // 8


def test_measure_speed_bad_args():
    with pytest.raises(ValueError, match="at least one model"):
        measure_speed({}, [4])
    with pytest.raises(ValueError, match="positive context lengths"):
        measure_speed({"a": tiny("attention")}, [0])
    with pytest.raises(ValueError, match="decode_steps"):
        measure_speed({"a": tiny("attention")}, [4], decode_steps=0)


def test_format_speed_table():
    a = [{"context": 512, "forward_tokens_per_s": 300.0, "decode_ms_per_token": 1.0, "state_bytes": 100}]
    b = [{"context": 512, "forward_tokens_per_s": 100.0, "decode_ms_per_token": 2.0, "state_bytes": 1000}]
    table = format_speed_table(a, b, "A", "B")
    assert "forward tok/s A" in table
    assert "| 512 | 300 | 100 | 3.00 | 1.00 | 2.00 | 2.00 | 100 | 1,000 | 10.0 |" in table
    with pytest.raises(ValueError, match="same context lengths"):
        format_speed_table(a, [{**b[0], "context": 64}], "A", "B")
