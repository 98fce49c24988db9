"""Evaluation and generation: bits per byte, loss by position with carried state, streaming sampling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from innerloop.eval import (
    check_sampling,
    evaluate_lm,
    evaluate_lm_full,
    loss_by_position,
    stream_generate,
    val_windows,
)
from innerloop.eval.generate import stdout_writer
from innerloop.eval.lm import bytes_by_position, full_windows, plot_loss_by_position, write_position_csv
from innerloop.models.lm import CausalLM, LMConfig


def tiny_lm(mixer: str) -> CausalLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   mini_batch_size=4, mixer=mixer)  # fmt: skip
    return CausalLM(cfg).eval()


def test_evaluate_lm_matches_manual_loss():
    model = tiny_lm("attention")
    tokens = torch.randint(0, 256, (500,), dtype=torch.uint8)
    m = evaluate_lm(model, tokens, context=16, batch_size=3, num_windows=7)
    x, y = val_windows(tokens, 16, 7)
    assert x.shape == (7, 16) and torch.equal(x[:, 1:], y[:, :-1])
    ref = F.cross_entropy(model(x).logits.flatten(0, 1), y.flatten()).item()
    assert m["loss"] == pytest.approx(ref, rel=1e-5)
    assert m["bpb"] == pytest.approx(ref / math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="smaller than one context window"):
        evaluate_lm(model, tokens[:10], context=16)


@pytest.mark.parametrize(
    ("n", "context", "stride"), [(101, 16, 16), (101, 16, 5), (17, 16, 3), (40, 16, 1), (50, 8, 7)]
)
def test_evaluate_lm_full_scores_every_target_once_with_its_window(n, context, stride):
    model = tiny_lm("attention")
    tokens = torch.randint(0, 256, (n,), dtype=torch.uint8)
    # the protocol written out: windows end where the first covers `context` targets and each next one `stride` more
    ends, e = [context], context
    while e < n - 1:
        e = min(e + stride, n - 1)
        ends.append(e)
    nll, seen = [], []
    prev = 0
    for e in ends:  # window = tokens[e - context : e]; it scores targets prev + 1 .. e (token indices)
        w = tokens[e - context : e + 1].long()[None]
        per = F.cross_entropy(model(w[:, :-1]).logits[0].float(), w[0, 1:], reduction="none")
        nll.append(per[context - (e - prev) :].double())
        seen += list(range(prev + 1, e + 1))
        assert e - prev <= stride or prev == 0  # every scored target after the first window sees >= context - stride
        prev = e
    assert seen == list(range(1, n))  # every target once, in order
    ref = torch.cat(nll).mean().item()
    starts, scored = full_windows(n, context, stride)
    assert starts.tolist() == [e - context for e in ends] and int(scored.sum()) == n - 1
    m = evaluate_lm_full(model, tokens, context, stride, batch_size=3)
    assert m["loss"] == pytest.approx(ref, rel=1e-6) and m["bpb"] == pytest.approx(ref / math.log(2), rel=1e-6)
    assert m["windows"] == len(ends) and m["scored_tokens"] == n - 1
    # BPE: bits per byte divides by the bytes of the scored targets
    token_bytes = torch.randint(1, 5, (256,))
    mb = evaluate_lm_full(model, tokens.numpy(), context, stride, batch_size=2, token_bytes=token_bytes)  # as a memmap
    assert mb["loss"] == pytest.approx(ref, rel=1e-6)
    n_bytes = int(token_bytes[tokens[1:].long()].sum())
    assert mb["bpb"] == pytest.approx(ref * (n - 1) / math.log(2) / n_bytes, rel=1e-6)


def test_evaluate_lm_full_stride_context_is_consecutive_windows_and_bad_input():
    model = tiny_lm("ttt_linear")
    tokens = torch.randint(0, 256, (16 * 6 + 1,), dtype=torch.uint8)  # exactly 6 windows of 16
    m = evaluate_lm_full(model, tokens, 16, batch_size=4)
    w = tokens.long().view(-1)[:-1].view(6, 16)
    y = tokens.long()[1:].view(6, 16)
    ref = F.cross_entropy(model(w).logits.flatten(0, 1), y.flatten()).item()
    assert m["windows"] == 6 and m["loss"] == pytest.approx(ref, rel=1e-5)
    with pytest.raises(ValueError, match="smaller than one context window"):
        full_windows(16, 16, 16)
    with pytest.raises(ValueError, match=r"--stride 17 must be in 1\.\.16 \(the context\)"):
        full_windows(100, 16, 17)


@pytest.mark.parametrize("mixer", ["ttt_linear", "ttt_mlp", "attention"])
def test_loss_by_position_with_state_equals_full_sequence(mixer):
    model = tiny_lm(mixer)
    docs = [torch.randint(0, 256, (n,), dtype=torch.uint8) for n in (60, 45, 70, 20)]  # the 20 is too short
    L = 41
    got = loss_by_position(model, docs, L, chunk=7, batch_size=2)  # odd chunk: state carried across 6 calls
    ref = torch.zeros(L, dtype=torch.float64)
    used = [d for d in docs if len(d) > L]
    for d in used:
        w = d[: L + 1].long()[None]
        logits = model(w[:, :-1]).logits
        ref += F.cross_entropy(logits[0].float(), w[0, 1:], reduction="none").double()
    ref /= len(used)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no document has more than 100 tokens"):
        loss_by_position(model, docs, 100)


def test_position_csv_and_plot(tmp_path):
    curves = {"a": torch.linspace(3, 1, 40, dtype=torch.float64), "b": torch.ones(40, dtype=torch.float64)}
    write_position_csv(curves, tmp_path / "p.csv", width=10)
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "name,position_start,position_end,loss,bpb" and len(lines) == 1 + 8
    pytest.importorskip("matplotlib")
    plot_loss_by_position(curves, tmp_path / "p.png", width=10, train_context=16)
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_position_plot_marks_each_runs_training_context(tmp_path, monkeypatch):
    """Runs trained at different contexts: the dashed "training context" line was drawn at the last run's context
    only, labelled as if every curve's."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    drawn = []
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **k: drawn.append((x, k.get("label"))))
    curves = {"short": torch.ones(40, dtype=torch.float64), "long": torch.ones(40, dtype=torch.float64)}
    plot_loss_by_position(curves, tmp_path / "p.png", width=10, train_context={"short": 8, "long": 32})
    assert sorted(drawn) == [(8, "training context of short"), (32, "training context of long")]
    drawn.clear()
    plot_loss_by_position(curves, tmp_path / "p.png", width=10, train_context={"short": 16, "long": 16})
    assert drawn == [(16, "training context")]
    drawn.clear()
    plot_loss_by_position(curves, tmp_path / "p.png", width=10, train_context=16)
    assert drawn == [(16, "training context")]


def test_position_bpb_of_a_bpe_run_divides_by_the_bytes_of_the_predicted_tokens(tmp_path):
    """The bpb column of a BPE run used to be bits per *token* (loss / ln 2)."""
    token_bytes = torch.tensor([1, 2, 3, 4])
    docs = [torch.tensor([0, 1, 2, 3, 0]), torch.tensor([3, 3, 3, 3, 3, 3]), torch.tensor([1, 2])]  # last: too short
    nb = bytes_by_position(docs, 4, token_bytes)  # targets: [2, 3, 4, 1] and [4, 4, 4, 4] bytes
    torch.testing.assert_close(nb, torch.tensor([3.0, 3.5, 4.0, 2.5], dtype=torch.float64))
    loss = torch.tensor([2.0, 2.0, 4.0, 4.0], dtype=torch.float64)
    write_position_csv({"bpe": loss, "bytes": loss}, tmp_path / "p.csv", width=2, bytes_per_position={"bpe": nb})
    rows = [line.split(",") for line in (tmp_path / "p.csv").read_text().splitlines()[1:]]
    ln2 = torch.log(torch.tensor(2.0)).item()
    got = {(r[0], int(r[1])): float(r[4]) for r in rows}
    assert got[("bpe", 0)] == pytest.approx(4.0 / ln2 / 6.5, rel=1e-5)
    assert got[("bpe", 2)] == pytest.approx(8.0 / ln2 / 6.5, rel=1e-5)
    assert got[("bytes", 0)] == pytest.approx(2.0 / ln2, rel=1e-5)  # byte tokens: loss / ln 2, as before


@pytest.mark.parametrize("mixer", ["ttt_linear", "attention"])
def test_stream_generate_greedy_equals_model_generate(mixer):
    model = tiny_lm(mixer)
    seen = []
    out = stream_generate(model, b"ROMEO:", 12, temperature=0.0, write=seen.append)
    ref = model.generate(torch.tensor([list(b"ROMEO:")]), 12, temperature=0.0)[0, 6:]
    assert list(out) == ref.tolist() and b"".join(seen) == out


def test_stream_generate_seeded_and_filters():
    model = tiny_lm("ttt_linear")
    a = stream_generate(model, b"\n", 20, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    b = stream_generate(model, b"\n", 20, temperature=1.0, top_k=5, top_p=0.9, seed=3)
    assert a == b and len(a) == 20
    # top_k=1 is greedy whatever the temperature
    assert stream_generate(model, b"\n", 10, temperature=5.0, top_k=1, seed=0) == stream_generate(
        model, b"\n", 10, temperature=0.0)


class _Scripted(torch.nn.Module):
    """A stand-in LM whose generation is a fixed byte string (counts the tokens it was asked for)."""

    def __init__(self, text: bytes) -> None:
        super().__init__()
        self.p, self.text, self.yielded = torch.nn.Parameter(torch.zeros(1)), text, 0

    def iter_generate(self, ids, max_new_tokens, *args):
        for b in self.text[:max_new_tokens]:
            self.yielded += 1
            yield torch.tensor([[b]])


@pytest.mark.parametrize(
    ("text", "stop", "want", "chunks", "tokens"),
    [
        (b"hello\n\nworld", b"\n\n", b"hello", [b"h", b"e", b"l", b"l", b"o"], 7),  # spans two tokens; stops there
        (b"ab\nc\n", b"\n\n", b"ab\nc\n", [b"a", b"b", b"\nc", b"\n"], 5),  # held back, then released
        (b"\n\nx", b"\n\n", b"", [], 2),  # at the very start: nothing written
        (b"abcab", b"abd", b"abcab", [b"abc", b"ab"], 5),  # a partial match at the end flushed
        (b"xxabab", b"ab", b"xx", [b"x", b"x"], 4),
    ],
)
def test_stream_generate_stops_at_a_stop_string_and_never_writes_it(text, stop, want, chunks, tokens):
    model, seen = _Scripted(text), []
    assert stream_generate(model, b"p", 50, temperature=0.0, write=seen.append, stop=stop) == want
    assert seen == chunks and model.yielded == tokens
    with pytest.raises(ValueError, match="stop must not be empty"):
        stream_generate(model, b"p", 5, stop=b"")


def test_stream_generate_stop_with_a_real_model():
    model = tiny_lm("ttt_linear")
    full = stream_generate(model, b"ROMEO:", 40, temperature=0.0)
    stop = full[12:15]
    seen = []
    out = stream_generate(model, b"ROMEO:", 40, temperature=0.0, write=seen.append, stop=stop)
    assert out == full[: full.find(stop)] and b"".join(seen) == out


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(temperature=float("nan")), "temperature must be >= 0"),
        (dict(top_k=-1), "top_k must be >= 1"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.01), r"top_p must be in \(0, 1\]"),
        (dict(max_new_tokens=-5), "max_new_tokens must be >= 0"),
    ],
)
def test_sampling_params_are_validated(kw, match):
    args = {"temperature": 1.0, "top_k": None, "top_p": None, "max_new_tokens": 1, **kw}
    with pytest.raises(ValueError, match=match):
        check_sampling(**args)
    with pytest.raises(ValueError, match=match):
        stream_generate(tiny_lm("attention"), b"a", **args)


def test_stdout_writer_prints_a_character_cut_short_at_the_end(capsys):
    """A sample ending inside a multi-byte UTF-8 character: the incremental decoder held its bytes back for good, so
    the last, incomplete character vanished from ``lm generate``'s output instead of printing as U+FFFD."""
    write = stdout_writer()
    for piece in (b"a", b"\xc3", b"\xa9", b"b", b"\xe2\x82"):  # "a", "é" split over two tokens, "b", 2 of 3 bytes
        write(piece)
    assert capsys.readouterr().out == "aéb"
    write(b"", final=True)
    assert capsys.readouterr().out == "\ufffd"


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="prompt must not be empty"):
        stream_generate(tiny_lm("attention"), b"", 3)
