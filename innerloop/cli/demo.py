"""``innerloop demo``: the main job. TTT-Linear vs a same-size Transformer byte-LM on tiny-shakespeare.

Both models get the same data, context, batch, steps, optimiser and seed (the same token budget) and about the same
parameter count. Sized to finish in about 3-4 minutes on 2 CPU cores; prints a results table and a generated sample,
then measures what a long context costs the two trained models at inference (forward tokens/s, decode ms/token and
decode-state bytes at contexts 512 to 8192: ``innerloop.eval.speed``), and writes ``results.md``, ``results.json``,
``loss_curves.png`` plus one run directory per model.

    innerloop demo                      # the full demo (default output: runs/demo-<time>)
    innerloop demo --quick              # seconds: a smoke test of the whole pipeline
    innerloop demo --steps 600 --out runs/demo-long
    innerloop demo --speed-contexts 1024 4096 16384   # other context lengths for the inference part (none: skip it)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
import textwrap
import time
from pathlib import Path

from innerloop._io import atomic_write_json, atomic_write_text
from innerloop.cli._flags import at_least, folder, number

# 1000 steps x 16 x 128 bytes = 2.05M training bytes per model (~2 epochs of the training split). Measured on 2
# idle cores (taskset, 2 threads): TTT-Linear 0.115 s/step, the Transformer 0.078 s/step, ~3.4 minutes in all.
DEFAULT_STEPS = 1000
# The guard that keeps the demo inside its time on a slow or busy machine: TTT-Linear trains for at most this
# many seconds, and the Transformer then trains for exactly as many steps, so the budgets stay equal.
DEFAULT_TRAIN_SECONDS = 130.0
# The inference part: context lengths of the forward / decode / state measurement (4-6 s in all, measured on a busy
# 2-core machine; the Transformer's forward at 8192 is most of it). --quick uses QUICK_SPEED_CONTEXTS.
SPEED_CONTEXTS = (512, 2048, 8192)
QUICK_SPEED_CONTEXTS = (32, 64)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="TTT-Linear vs Transformer byte-LMs on tiny-shakespeare in ~3-4 CPU minutes")
    p.add_argument("--out", type=folder, default=None, help="output folder (default: runs/demo-<time>)")
    p.add_argument("--steps", type=at_least(1), default=None,
                   help=f"optimizer steps per model (default: {DEFAULT_STEPS})")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="tiny models and a few steps: checks the pipeline in seconds")
    p.add_argument("--max-train-seconds", type=number, default=None,
                   help=f"cap on TTT-Linear's training time, the Transformer then gets as many steps "
                        f"(default: {DEFAULT_TRAIN_SECONDS:.0f}; 0 = no cap)")  # fmt: skip
    p.add_argument("--sample-bytes", type=at_least(0), default=None,
                   help="length of the generated sample (default: 300)")  # fmt: skip
    p.add_argument("--threads", type=at_least(0), default=0,
                   help="torch CPU threads (default 0 = all cores, or 1 when the load average says they are busy: "
                        "small models slow down many times when threads compete for busy cores)")
    p.add_argument("--speed-contexts", type=int, nargs="*", default=None, metavar="L",
                   help="context lengths of the inference-cost part (default: 512 2048 8192; --quick: 32 64); "
                        "give the flag with no value to skip that part")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N; default: cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def demo_config(args: argparse.Namespace, out: Path):
    from innerloop.train.config import TrainConfig

    if args.quick:
        steps = args.steps or 6
        model = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1, context=32, batch_size=4)
        sched = dict(warmup_steps=1, eval_every=max(steps // 2, 1), eval_batches=1, log_every=1)
    else:
        steps = args.steps or DEFAULT_STEPS
        model = dict(hidden_size=128, num_attention_heads=4, num_hidden_layers=2, context=128, batch_size=16)
        sched = dict(warmup_steps=max(min(30, steps // 10), 1), eval_every=max(steps // 5, 1), eval_batches=4,
                     log_every=5)  # fmt: skip
    cap = args.max_train_seconds
    if cap is None:
        cap = 0.0 if args.quick else DEFAULT_TRAIN_SECONDS
    return TrainConfig.from_flat(mixer="ttt_linear", steps=steps, lr=3e-3, min_lr_ratio=0.1, checkpoint_every=steps,
                       max_seconds=cap, device=args.device, out=str(out / "ttt_linear"), **model, **sched)  # fmt: skip


def pick_threads(requested: int) -> int:
    """``requested`` if > 0; else torch's default, or 1 if the 1-minute load average exceeds the core count."""
    import torch

    if requested > 0:
        return requested
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] > cores
    except OSError:  # not available on this platform
        busy = False
    return 1 if busy else torch.get_num_threads()


def check_packages(progress: bool) -> tuple[str | None, list[str]]:
    """What the installed packages allow, found before any work: ``(error, notes)``.

    ``error`` (checkpoints need safetensors; the demo would lose its training at the first one) stops the demo;
    ``notes`` name what will be skipped (progress bars without tqdm, the plot without matplotlib) and how to get it.
    All three are base dependencies of innerloop, so these only show in an environment that lost them.
    """
    missing = [m for m in ("safetensors", "tqdm", "matplotlib") if importlib.util.find_spec(m) is None]
    error = None
    if "safetensors" in missing:
        error = "checkpoints need safetensors, which is not installed: pip install safetensors (or reinstall innerloop)"
    notes = []
    if "tqdm" in missing and progress:
        notes.append("no progress bars: tqdm is not installed (pip install tqdm)")
    if "matplotlib" in missing:
        notes.append("no loss_curves.png: matplotlib is not installed (pip install matplotlib)")
    return error, notes


def run(args: argparse.Namespace) -> int:
    import torch

    from innerloop.eval.generate import check_sampling, stdout_writer, stream_generate
    from innerloop.train.compare import format_table, size_for_params
    from innerloop.train.lm import load_run, plot_log, train_lm
    from innerloop.train.trainer import Callback

    t_start = time.perf_counter()
    error, notes = check_packages(not args.no_progress)
    if error:
        print(f"innerloop demo: error: {error}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"innerloop demo: note: {note}", file=sys.stderr)
    torch.set_num_threads(pick_threads(args.threads))
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    sample_bytes = args.sample_bytes if args.sample_bytes is not None else (40 if args.quick else 300)
    check_sampling(0.8, None, 0.95, sample_bytes)
    contexts = args.speed_contexts
    if contexts is None:
        contexts = list(QUICK_SPEED_CONTEXTS if args.quick else SPEED_CONTEXTS)
    if any(L < 1 for L in contexts):
        print(f"innerloop demo: error: --speed-contexts must be positive lengths, got {contexts}", file=sys.stderr)
        return 2
    try:
        ttt_cfg = demo_config(args, out)
    except ValueError as e:
        print(f"innerloop demo: error: {e}", file=sys.stderr)
        return 2
    attn_cfg = dataclasses.replace(ttt_cfg, model=dataclasses.replace(ttt_cfg.model, mixer="attention"),
                                   out=str(out / "attention"), max_seconds=0.0)
    from innerloop.train.compare import params_of

    attn_cfg = size_for_params(attn_cfg, params_of(ttt_cfg))
    tokens = ttt_cfg.steps * ttt_cfg.batch_size * ttt_cfg.context
    print(f"innerloop demo: TTT-Linear vs Transformer byte-level LMs on tiny-shakespeare -> {out}/")
    print(f"  same budget: {ttt_cfg.steps} steps x {ttt_cfg.batch_size} x {ttt_cfg.context} bytes = {tokens:,} "
          f"training tokens each, {ttt_cfg.model.num_hidden_layers} layers, AdamW + cosine, seed {ttt_cfg.seed}, "
          f"{torch.get_num_threads()} CPU thread(s)")  # fmt: skip
    progress = not args.no_progress
    rows = []
    parts = 4 if contexts else 3
    print(f"[1/{parts}] training TTT-Linear (hidden {ttt_cfg.model.hidden_size}) ...", flush=True)
    rows.append({**train_lm(ttt_cfg, progress=progress), "hidden_size": ttt_cfg.model.hidden_size,
                 "mixer": "TTT-Linear"})  # fmt: skip

    class StopAt(Callback):  # keep the token budgets equal when TTT-Linear hit its time cap
        def on_step_end(self, trainer, step, logs):
            trainer.should_stop = trainer.should_stop or trainer.step >= rows[0]["steps"]

    if rows[0]["stopped_early"]:
        print(f"  (time cap {ttt_cfg.max_seconds:.0f}s reached at step {rows[0]['steps']}: the Transformer gets "
              f"the same {rows[0]['steps']} steps)")  # fmt: skip
    print(f"[2/{parts}] training Transformer (hidden {attn_cfg.model.hidden_size}) ...", flush=True)
    rows.append({**train_lm(attn_cfg, progress=progress, callbacks=[StopAt()]),
                 "hidden_size": attn_cfg.model.hidden_size, "mixer": "Transformer"})  # fmt: skip

    table = format_table(rows)
    print("\n" + table + "\n")
    write_results(out, rows, table)
    if importlib.util.find_spec("matplotlib") is not None:
        plot_log({"TTT-Linear": out / "ttt_linear" / "log.csv", "Transformer": out / "attention" / "log.csv"},
                 out / "loss_curves.png")  # fmt: skip
        print(f"loss curves: {out / 'loss_curves.png'}")

    print(f"[3/{parts}] sample from TTT-Linear (temperature 0.8, top-p 0.95, decoded byte by byte from its state):\n")
    model, _ = load_run(out / "ttt_linear", args.device)
    prompt = b"ROMEO:\n"
    sys.stdout.write(prompt.decode())
    write = stdout_writer()
    stream_generate(model, prompt, sample_bytes, temperature=0.8, top_p=0.95, seed=0, write=write)
    write(b"", final=True)
    print("\n", flush=True)
    if contexts:
        print(f"[{parts}/{parts}] inference cost at growing context, on the two trained models ...", flush=True)
        attn, _ = load_run(out / "attention", args.device)
        t_speed = time.perf_counter()
        results, markdown = speed_section(model, attn, contexts, ttt_cfg.context, quick=args.quick)
        for row, result in zip(rows, results):
            row["speed"] = result
        print("\n" + markdown + f"\n(measured in {time.perf_counter() - t_speed:.0f} s)\n")
        write_results(out, rows, table + "\n\n## Inference cost at growing context\n\n" + markdown)
    print(f"done in {time.perf_counter() - t_start:.0f} s. Results: {out / 'results.md'}")
    return 0


def speed_section(ttt, attn, contexts: list[int], trained_context: int, quick: bool) -> tuple[list, str]:
    """Measure both models at ``contexts`` (:func:`innerloop.eval.speed.measure_speed`): ``([ttt_rows, attn_rows],
    markdown)``, the markdown saying what is measured, the table, and the comparison at the longest context."""
    from innerloop.eval.speed import format_speed_table, measure_speed

    reps, steps = (1, 2) if quick else (5, 32)
    both = measure_speed({"ttt": ttt, "attn": attn}, contexts, repeats=reps, decode_steps=steps)
    a, b = both["ttt"], both["attn"]
    what = textwrap.fill(
        "What it measures: the cost of a long context at inference, not quality (the models were trained at context "
        f"{trained_context}): one sequence of random bytes, no gradients, the two models timed in turn, medians of "
        "repeated calls. forward tok/s = "
        "tokens per second of one pass over L tokens (a prefill); decode ms/token = time of one new token after an "
        "L-token prefill; state bytes = exactly what the model carries to decode the next token: the Transformer's KV "
        "cache grows with L, TTT-Linear's inner model (and its pending gradient) does not. x = how many times cheaper "
        "TTT-Linear is (below 1: the Transformer is cheaper). Timings depend on the machine and its load; compare the "
        "ratios.", width=118)  # fmt: skip
    la, lb = a[-1], b[-1]
    fwd = la["forward_tokens_per_s"] / lb["forward_tokens_per_s"]
    dec = lb["decode_ms_per_token"] / la["decode_ms_per_token"]
    summary = textwrap.fill(
        f"At context {la['context']:,} TTT-Linear's forward is {_times(fwd, 'faster', 'slower')}, its decoding "
        f"{_times(dec, 'faster', 'slower')}, and its decode state {la['state_bytes']:,} bytes against a "
        f"{lb['state_bytes']:,}-byte KV cache.", width=118)
    return [a, b], what + "\n\n" + format_speed_table(a, b, "TTT-Linear", "Transformer") + "\n\n" + summary


def _times(ratio: float, better: str, worse: str) -> str:
    return f"{ratio:.2f}x {better}" if ratio >= 1 else f"{1 / ratio:.2f}x {worse}"


def write_results(out: Path, rows: list[dict], markdown: str) -> None:
    """``results.md`` (tables) and ``results.json`` (one dict per model; ``speed`` rows once measured)."""
    atomic_write_text(out / "results.md", markdown + "\n")
    atomic_write_json(out / "results.json", rows)
