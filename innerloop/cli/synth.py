"""``innerloop synth train|table``: synthetic memory tasks for every mixer.

Flags come from :class:`innerloop.synth.SynthConfig`. Examples::

    innerloop synth train --task copy --mixer lstm --train-length 8 --eval-lengths 8 16 --out runs/copy-lstm
    innerloop synth train --task mqar --mixer attention --task-option vocab_size=64 --steps 1000
    innerloop synth train --task arm --mixer gru --train-length 32       # also writes rollout.csv, trajectories.png
    innerloop synth table --tasks copy adding --mixers lstm gru attention --target-params 20000 --out runs/table

``train`` writes ``config.json``, ``log.csv``, ``metrics.json`` under ``--out``; ``table`` runs every (task, mixer)
pair at about ``--target-params`` parameters and writes ``table.csv`` and ``table.md`` (plus one run directory each).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from innerloop._io import atomic_write_text, write_csv
from innerloop.cli._flags import Distinct, add_dataclass_flags, add_run_flags, dataclass_values, run_config_values
from innerloop.synth.harness import SynthConfig

TABLE_TASKS = ["copy", "reverse", "selective_copy", "copying_memory", "adding", "addition", "mqar", "arm"]
TABLE_MIXERS = ["rnn", "lstm", "gru", "mamba", "attention", "ttt_linear", "ttt_mlp"]


def _parse_option(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k, json.loads(v)
    except json.JSONDecodeError:
        return k, v


def _add_config_flags(p: argparse.ArgumentParser, skip: set[str] = frozenset()) -> None:
    add_dataclass_flags(p, SynthConfig, {"task_options", *skip})
    p.add_argument("--task-option", action="append", type=_parse_option, default=[], metavar="KEY=VALUE",
                   help="task constructor option, e.g. vocab_size=16 (repeatable; values are JSON or text)")


def _config(args: argparse.Namespace, resume: bool = False, **override) -> SynthConfig:
    """The run's config; ``resume``: settings not given are taken from the run in ``--out`` (``synth train``)."""
    if resume:
        values = run_config_values(args, SynthConfig, "innerloop synth train")  # task_options has no flag of its own
    else:
        values = dataclass_values(args, SynthConfig, {"task_options"})
    if args.task_option or not resume:
        values["task_options"] = dict(args.task_option)
    return SynthConfig(**{**values, **override})


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="synthetic memory tasks (copy, adding, MQAR, arm, ...) for any mixer",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ssub = p.add_subparsers(dest="synth_command", required=True, metavar="COMMAND")
    t = ssub.add_parser("train", help="train one mixer on one task; report accuracy/MSE incl. longer lengths")
    _add_config_flags(t)
    t.add_argument("--progress", action="store_true", help="show a progress bar while training")
    add_run_flags(t)
    t.set_defaults(func=run_train)
    tb = ssub.add_parser("table", help="every mixer on every task at about equal parameter count")
    _add_config_flags(tb, skip={"task", "mixer"})
    choices = SynthConfig.CHOICES
    tb.add_argument("--tasks", nargs="+", action=Distinct, default=TABLE_TASKS, choices=sorted(choices["task"]),
                    metavar="TASK",
                    help=f"tasks (rows), any of: {', '.join(sorted(choices['task']))}; default: all")  # fmt: skip
    tb.add_argument("--mixers", nargs="+", action=Distinct, default=TABLE_MIXERS, choices=sorted(choices["mixer"]),
                    metavar="MIXER",
                    help=f"mixers (columns), any of: {', '.join(sorted(choices['mixer']))}; "
                    f"default: {' '.join(TABLE_MIXERS)}")  # fmt: skip
    add_run_flags(tb)
    tb.set_defaults(func=run_table)


def _summary(m: dict) -> str:
    parts = []
    for e in m["eval"]:
        tag = "*" if e["generalisation"] else ""
        score = f"mse {e['mse']:.4f}" if "mse" in e else f"tok {e['token_acc']:.3f} seq {e['seq_acc']:.3f}"
        if "loss" in e["baseline"]:
            score = f"loss {e['loss']:.4f} " + score
        base = ", ".join(f"{k} {v:.3g}" for k, v in e["baseline"].items())
        parts.append(f"L={e['length']}{tag}: {score} (baseline {base})")
    return "; ".join(parts)


def run_train(args: argparse.Namespace) -> int:
    from innerloop.synth import train

    cfg = _config(args, resume=True)
    m, _ = train(cfg, progress=args.progress, fresh=args.fresh, extend=args.extend)
    print(f"{cfg.task} / {cfg.mixer} ({m['num_params']} params, hidden {m['hidden_size']}, "
          f"{m['train_seconds']:.1f} s): {_summary(m)}")
    if "rollout" in m:
        print("rollout:", ", ".join(f"{k} {v:.4f}" for k, v in m["rollout"].items()))
    files = ("config.json", "log.csv", "metrics.json", "rollout.csv", "trajectories.png")  # the last two: arm only
    print(f"wrote {cfg.out}/" + ", ".join(f for f in files if (Path(cfg.out) / f).is_file()))
    return 0


def run_table(args: argparse.Namespace) -> int:
    from innerloop.synth import train
    from innerloop.synth.harness import check_task

    root = Path(args.out or SynthConfig.out)
    first = _config(args, task=args.tasks[0], mixer=args.mixers[0])  # bad flags fail here, before any run
    for task in args.tasks:  # and so do task options or lengths that one of the tasks cannot take
        check_task(_config(args, task=task, mixer=args.mixers[0]))
    root.mkdir(parents=True, exist_ok=True)
    size = f"~{first.target_params:,} params" if first.target_params else f"hidden {first.hidden_size}"
    print(f"innerloop synth table: {len(args.tasks)} tasks x {len(args.mixers)} mixers at {size}, out {root}",
          flush=True)
    rows = []
    for task in args.tasks:
        for mixer in args.mixers:
            cfg = _config(args, task=task, mixer=mixer, out=str(root / f"{task}-{mixer}"))
            m, _ = train(cfg, fresh=args.fresh, extend=args.extend)
            for e in m["eval"]:
                # copying memory is scored by its cross-entropy against the memoryless baseline (uRNN convention)
                metric = "mse" if "mse" in e else "loss" if "loss" in e["baseline"] else "token_acc"
                score = e[metric]
                rows.append({"task": task, "mixer": mixer, "params": m["num_params"], "hidden": m["hidden_size"],
                             "length": e["length"], "metric": metric, "baseline": e["baseline"][metric],
                             "score": score, "seq_acc": e.get("seq_acc", float("nan")), "loss": e["loss"],
                             "seconds": m["train_seconds"]})
            print(f"{task:>15} {mixer:>10}: {_summary(m)}", flush=True)
    write_csv([_rounded(r) for r in rows], root / "table.csv")
    atomic_write_text(root / "table.md", _markdown(rows, args.mixers))  # from the unrounded numbers (see _rounded)
    print(f"wrote {root}/table.csv and table.md")
    return 0


def _rounded(row: dict) -> dict:
    """``row`` as ``table.csv`` holds it: scores to 4 decimals, seconds to 1. ``table.md`` prints the unrounded numbers
    to 3 decimals: rounding the CSV's 4-decimal values again would put one in 20 cells a unit off in the last digit
    (0.21949 -> 0.2195 -> 0.220, where metrics.json says 0.219)."""
    return {**row, **{k: round(row[k], 4) for k in ("baseline", "score", "seq_acc", "loss")},
            "seconds": round(row["seconds"], 1)}


def _markdown(rows: list[dict], mixers: list[str]) -> str:
    keys = sorted({(r["task"], r["length"], r["metric"]) for r in rows}, key=lambda k: (k[0], k[1]))
    cell = {(r["task"], r["length"], r["mixer"]): r["score"] for r in rows}
    base = {(r["task"], r["length"]): r["baseline"] for r in rows}
    head = "| task | length | metric | baseline | " + " | ".join(mixers) + " |"
    lines = [head, "|---" * (4 + len(mixers)) + "|"]
    for task, length, metric in keys:
        vals = [f"{cell[(task, length, m)]:.3f}" if (task, length, m) in cell else "" for m in mixers]
        lines.append(f"| {task} | {length} | {metric} | {base[(task, length)]:.3f} | " + " | ".join(vals) + " |")
    params = {r["mixer"]: r["params"] for r in rows}
    lines.append("")
    lines.append("params (last task): " + ", ".join(f"{m} {params.get(m, '?')}" for m in mixers))
    return "\n".join(lines) + "\n"
