"""``innerloop lm train|eval|generate|compare``: language models (bytes or a local BPE) over any registered mixer.

Flags of ``train``/``compare`` are generated from :class:`innerloop.train.TrainConfig`. Examples::

    innerloop lm train --mixer ttt_linear --steps 2000 --out runs/lm/ttt      # again with the same --out resumes
    innerloop lm train --out runs/lm/ttt --steps 4000 --extend                  # trains it further, same settings
    innerloop lm eval --run runs/lm/ttt                                         # val loss / bits per byte
    innerloop lm eval --run runs/books/ttt_linear runs/books/attention --length 8192 --out runs/books/position
    innerloop lm generate --run runs/lm/ttt --prompt "ROMEO:" --max-new-tokens 400 --temperature 0.8 --top-p 0.95
    innerloop lm compare --mixers ttt_linear ttt_mlp attention --target-params 1000000 --steps 1000 --out runs/cmp
    innerloop lm train --tokenizer bpe --vocab-size 4096 --data books/ --out runs/bpe    # tokens: ~/.cache/innerloop
    torchrun --standalone --nproc_per_node=2 -m innerloop lm train --batch-size 32 --out runs/lm/ddp
    innerloop lm export --run runs/lm/ttt --to-hf hf/ttt        # transformers: AutoModelForCausalLM.from_pretrained
    innerloop lm import --from-hf hf/ttt --out runs/lm/ttt-back  # and back to a run directory
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

from innerloop.cli._flags import (
    Distinct,
    add_dataclass_flags,
    add_run_flags,
    at_least,
    folder,
    number,
    run_config_values,
    saved_run_config,
)
from innerloop.layers import MIXERS
from innerloop.models.lm import LMConfig
from innerloop.train.config import TrainConfig

_SKIP_COMPARE = {"mixer", "out"}
_DEVICE_HELP = "auto (cuda if available, else cpu) | cpu | cuda | cuda:N; default: auto"


# the model flags (LMConfig's fields) show the defaults of a training run, not LMConfig's (the paper's 125m)
_MODEL_DEFAULTS_SHOWN = {"hidden_size": "128", "num_hidden_layers": "2", "num_attention_heads": "4",
                         "intermediate_size": "2 * hidden_size", "vocab_size": "256 for bytes, 2048 for bpe"}
_MODEL_SKIP = {"mixer_options"}  # a dict: Python only (LMConfig.mixer_options)


def _add_config_flags(p: argparse.ArgumentParser, skip: set[str] = frozenset(),
                      show_default: dict[str, str] | None = None) -> None:  # fmt: skip
    """The flags of a run: the model's (LMConfig, nested in the config) then the run's (TrainConfig)."""
    add_dataclass_flags(p, LMConfig, set(skip) | _MODEL_SKIP, _MODEL_DEFAULTS_SHOWN)
    add_dataclass_flags(p, TrainConfig, set(skip) | {"model"}, show_default)


def _config(args: argparse.Namespace, skip: set[str] = frozenset(), resume: bool = False, **extra) -> TrainConfig:
    """The run's config from the flags; ``resume`` (``lm train``): settings not given are taken from the run in
    ``--out`` (its nested ``model`` for the model's fields; ``mixer_options``, Python only, kept from the run)."""
    saved = saved_run_config(args, "innerloop lm train", TrainConfig.upgrade_dict) if resume else {}
    model = run_config_values(args, LMConfig, "innerloop lm train", skip=skip, saved=saved.get("model") or {})
    run = run_config_values(args, TrainConfig, "innerloop lm train", skip=set(skip) | {"model"}, saved=saved)
    return TrainConfig.from_flat(**{**model, **run, **extra})


# flags that only some mixers read: given for another mixer they would be recorded in config.json but change nothing
_MIXER_FLAGS = ("mini_batch_size", "ttt_base_lr", "share_qk", "use_gate", "rope_theta", "conv_kernel")
_TTT_RUN_FLAGS = ("ttt_lr_warmup_steps", "ttt_base_lr_init")


def _warn_unused_flags(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """One line on stderr per model flag given on the command line that the chosen mixer does not read."""
    m = cfg.model
    used = set(MIXERS[m.mixer].config_options) | ({"conv_kernel"} if m.pre_conv else set())
    unused = [f for f in _MIXER_FLAGS if getattr(args, f, None) is not None and f not in used]
    if m.mixer not in ("ttt_linear", "ttt_mlp"):
        unused += [f for f in _TTT_RUN_FLAGS if getattr(args, f, None) is not None]
    for f in unused:
        print(f"innerloop lm: note: --{f.replace('_', '-')} has no effect with --mixer {m.mixer} (its options: "
              f"{', '.join(MIXERS[m.mixer].config_options) or 'none'})", file=sys.stderr)


def _is_main_process() -> bool:
    """False on the ranks > 0 of a ``torchrun`` launch: only rank 0 prints headers and summaries."""
    return os.environ.get("RANK", "0") == "0"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lm", help="language models (bytes or BPE tokens): train, eval, generate, compare",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    lsub = p.add_subparsers(dest="lm_command", required=True, metavar="COMMAND")

    t = lsub.add_parser("train", help="train an LM (resumes if --out holds a checkpoint)")
    _add_config_flags(t, show_default={"out": "runs/lm/<mixer>-<time>"})
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_run_flags(t)
    t.set_defaults(func=run_train)

    e = lsub.add_parser("eval", help="validation loss / bits per byte, and loss by token position (--length)")
    e.add_argument("--run", nargs="+", action=Distinct, required=True,
                   help="run directories made by `innerloop lm train`")
    e.add_argument("--data", default=None,
                   help="evaluate on this file/folder's held-out split, tokenized with the run's tokenizer and split "
                   "by its --val-fraction (eval.json records which); default: the run's data")
    e.add_argument("--full", action="store_true",
                   help="score every token of the validation split (windows of the run's context sliding by "
                   "--stride, each scoring the tokens no earlier one did) instead of the training's evenly spaced "
                   "sample of windows")
    e.add_argument("--stride", type=at_least(1), default=None,
                   help="with --full: tokens each window slides on; default: the context (non-overlapping windows, "
                   "each from an empty state); smaller gives every token at least context - stride tokens before it")
    e.add_argument("--dtype", choices=["run", "fp32", "bf16"], default="run",
                   help="precision of the scoring: run = as the run's training evaluated (its --dtype; auto is bf16 "
                   "autocast on CUDA, fp32 elsewhere), so the numbers reproduce metrics.json; default: run")
    e.add_argument("--length", type=at_least(0), default=0,
                   help="score positions 0..length-1 of long held-out documents; default: 0 = off")
    e.add_argument("--chunk", type=at_least(0), default=0,
                   help="tokens per forward call, state carried; default: 0 = the run's context")
    e.add_argument("--bucket", type=at_least(0), default=0,
                   help="positions per plotted point; default: 0 = length / 32")
    e.add_argument("--gutenberg", action="store_true", help="strip Project Gutenberg headers/footers (books)")
    e.add_argument("--out", type=folder, default=None,
                   help="folder for eval.json, position.csv/png; default: the first run")
    e.add_argument("--device", default="auto", help=_DEVICE_HELP)
    e.set_defaults(func=run_eval)

    g = lsub.add_parser("generate", help="sample text from a trained run, streamed to the terminal")
    g.add_argument("--run", required=True, help="run directory made by `innerloop lm train`")
    g.add_argument("--prompt", default="\n", help="text to continue; default: a newline")
    g.add_argument("--max-new-tokens", type=at_least(1), default=500, help="tokens to sample; default: 500")
    g.add_argument("--temperature", type=number, default=0.8, help="sampling temperature >= 0, 0 = greedy; "
                   "default: 0.8")  # fmt: skip
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; default: 0 = off")
    g.add_argument("--top-p", type=number, default=1.0, help="nucleus mass in (0, 1]; default: 1 = off")
    g.add_argument("--stop", default=None, help="end where the new text first contains this text (not printed), "
                   "e.g. --stop $'\\n\\n' in bash; default: none (--max-new-tokens tokens)")  # fmt: skip
    g.add_argument("--seed", type=int, default=None, help="sampling seed; default: random")
    g.add_argument("--device", default="auto", help=_DEVICE_HELP)
    g.set_defaults(func=run_generate)

    x = lsub.add_parser("export", help="write a run as a transformers model directory (needs the hf extra)")
    x.add_argument("--run", required=True, help="run directory made by `innerloop lm train`")
    x.add_argument("--to-hf", required=True, help="output folder: config.json, model.safetensors (Hub layout)")
    x.set_defaults(func=run_export)

    i = lsub.add_parser("import", help="make a run directory from a transformers model directory (hf extra)")
    i.add_argument("--from-hf", required=True, help="folder written by `innerloop lm export` (or export_hf)")
    i.add_argument("--out", type=folder, required=True, help="new run directory (for lm eval / lm generate)")
    i.set_defaults(func=run_import)

    c = lsub.add_parser("compare", help="train several mixers at ~equal parameter count and token budget")
    c.add_argument("--mixers", nargs="+", action=Distinct, default=["ttt_linear", "attention"], choices=sorted(MIXERS),
                   metavar="MIXER", help=f"mixers to train, one of: {', '.join(sorted(MIXERS))}; "
                   "default: ttt_linear attention")  # fmt: skip
    c.add_argument("--target-params", type=number, default=0, help="size each model to ~this many params; "
                   "default: 0 = the same hidden size for all")  # fmt: skip
    c.add_argument("--out", type=folder, default=None, help="comparison folder; default: runs/compare/<time>")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_flags(c, _SKIP_COMPARE)
    add_run_flags(c)
    c.set_defaults(func=run_compare)


def _stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _header(cfg: TrainConfig, fresh: bool = False) -> str:
    """One line saying what is about to train: mixer, budget, device, output folder."""
    from innerloop.runs.checkpoint import checkpoint_steps
    from innerloop.train.distributed import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(cfg.device) + (f" x {world} processes ({cfg.parallel})" if world > 1 else "")
    resume = ", resuming its latest checkpoint" if checkpoint_steps(Path(cfg.out) / "checkpoints") and not fresh else ""
    m = cfg.model
    return (f"innerloop lm train: {m.mixer} ({m.backbone} backbone, hidden {m.hidden_size} x "
            f"{m.num_hidden_layers} layers, {cfg.tokenizer}), {cfg.steps} steps x {cfg.batch_size} x "
            f"{cfg.context} tokens, device {device}, out {cfg.out}{resume}")  # fmt: skip


def run_train(args: argparse.Namespace) -> int:
    from innerloop.train.distributed import cleanup_distributed
    from innerloop.train.lm import train_lm

    if not args.out and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would stamp its own folder
        raise ValueError("under torchrun, give the run's folder with --out: the default runs/lm/<mixer>-<time> is "
                         "stamped by each process's own clock, so the processes could name different folders")
    extra = {} if args.out else {"out": f"runs/lm/{args.mixer or LMConfig.mixer}-{_stamp()}"}
    cfg = _config(args, resume=True, **extra)
    is_main = _is_main_process()
    if is_main:
        _warn_unused_flags(args, cfg)
        print(_header(cfg, args.fresh), flush=True)
    try:
        m = train_lm(cfg, progress=not args.no_progress, fresh=args.fresh, extend=args.extend)
    finally:  # under torchrun: leave the process group before exit (gloo/NCCL teardown at exit may abort)
        cleanup_distributed()
    if m and is_main:
        print(f"{cfg.out}: {m['steps']} steps, val bits/byte {m.get('val_bpb', float('nan')):.4f}, "
              f"{m['tokens_per_s']:,.0f} train tokens/s, {m['params']:,} params")  # fmt: skip
    return 0


def run_names(runs: list[str]) -> list[str]:
    """The names of run directories in ``eval.json`` and ``position.csv``: each folder's name, with as many parent
    folders as make the names differ (``cmp1/ttt_linear``, ``cmp2/ttt_linear``: two ``lm compare`` outputs).

    Raises:
        ValueError: two of ``runs`` are the same folder written differently (``run`` and ``./run/``).
    """
    parts = [Path(os.path.abspath(r)).parts for r in runs]
    if len(set(parts)) < len(parts):
        raise ValueError(f"--run names the same folder twice ({', '.join(runs)}); give each run once")
    k = 1
    while len({p[-k:] for p in parts}) < len(parts):
        k += 1
    return ["/".join(p[-k:]) for p in parts]


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from innerloop._io import atomic_write_text
    from innerloop.data.text import cache_dir_of, load_data, load_tokenizer, token_bytes_of
    from innerloop.eval.lm import (
        bytes_by_position,
        evaluate_lm,
        evaluate_lm_full,
        loss_by_position,
        plot_loss_by_position,
        val_starts,
        write_position_csv,
    )
    from innerloop.train.lm import load_run  # the model only: its data comes from innerloop.data.text

    if args.stride is not None and not args.full:
        raise ValueError("--stride is for --full (the windows that score every token); add --full or drop --stride")
    curves, results, nbytes, contexts = {}, {}, {}, {}
    for run, name in zip(args.run, run_names(args.run)):
        model, cfg = load_run(run, args.device)
        device_type = model.embed_tokens.weight.device.type
        dtype = cfg.dtype if args.dtype == "run" else args.dtype
        bf16 = dtype == "bf16" or (dtype == "auto" and device_type == "cuda")  # as the Trainer's autocast
        scoring = functools.partial(torch.autocast, device_type, dtype=torch.bfloat16, enabled=bf16)
        tok = load_tokenizer(cfg.tokenizer, run)
        data = cfg.data if args.data is None else args.data
        d = load_data(data, tok, cache_dir_of(run, cfg.cache_dir), args.gutenberg or cfg.gutenberg, cfg.val_fraction)
        d.check_context(cfg.context)
        unit = "byte" if tok.name == "bytes" else "token"
        if args.full:
            stride = args.stride or cfg.context  # full_windows refuses one larger than the context
            with scoring():
                m = evaluate_lm_full(model, d.val, cfg.context, stride, cfg.micro_batch_size(), token_bytes_of(tok))
            results[name] = {**m, "data": d.source, "tokenizer": tok.ident, "protocol": "full", "context": cfg.context,
                             "stride": stride, "val_tokens": len(d.val),
                             "dtype": "bf16" if bf16 else "fp32"}  # fmt: skip
            how = ("consecutive windows, each from an empty state" if stride == cfg.context
                   else f"windows sliding by {stride}, each token with at least {cfg.context - stride} before it")
            print(f"{run}: val loss {m['loss']:.4f} nats/{unit}, {m['bpb']:.4f} bits/byte (every one of the "
                  f"validation split's {m['scored_tokens']:,} targets, in {m['windows']:,} {how}; context "
                  f"{cfg.context})")  # fmt: skip
        else:
            with scoring():
                m = evaluate_lm(model, d.val, cfg.context, cfg.micro_batch_size(), cfg.eval_batches * cfg.batch_size,
                                token_bytes=token_bytes_of(tok))  # fmt: skip
            # what was scored: evenly spaced windows, each from an empty state (a sample of the split, as in training)
            windows = len(val_starts(len(d.val), cfg.context, cfg.eval_batches * cfg.batch_size))
            scored = {"protocol": "sample", "windows": windows, "context": cfg.context, "val_tokens": len(d.val),
                      "dtype": "bf16" if bf16 else "fp32"}  # fmt: skip
            results[name] = {**m, "data": d.source, "tokenizer": tok.ident, **scored}
            print(f"{run}: val loss {m['loss']:.4f} nats/{unit}, {m['bpb']:.4f} bits/byte (on {windows} evenly spaced "
                  f"windows of {cfg.context} tokens, each from an empty state: "
                  f"{min(windows * cfg.context / len(d.val), 1.0):.0%} of the validation split's {len(d.val):,} "
                  f"tokens; --full scores all of it)")  # fmt: skip
        if args.length:
            with torch.no_grad(), scoring():
                curves[name] = loss_by_position(model, d.val_docs, args.length, args.chunk or cfg.context)
            contexts[name] = cfg.context
            if tok.name != "bytes":  # positions are tokens; bits per byte divides by the bytes they hold
                nbytes[name] = bytes_by_position(d.val_docs, args.length, token_bytes_of(tok))
    out = Path(args.out or args.run[0])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(results, indent=2) + "\n")
    if curves:
        width = args.bucket or max(args.length // 32, 1)
        write_position_csv(curves, out / "position.csv", width, nbytes)
        try:
            plot_loss_by_position(curves, out / "position.png", width, contexts, nbytes)  # each run's context
        except ImportError as e:
            print(f"(no plot: {e})", file=sys.stderr)
        print(f"loss by position: {out / 'position.csv'}, {out / 'position.png'}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from innerloop.data.text import load_tokenizer
    from innerloop.eval.generate import check_sampling, stdout_writer, stream_generate
    from innerloop.train.lm import load_run  # the model only

    check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    if args.stop == "":
        raise ValueError("--stop '' would end before the first token: give some text, or leave --stop out")
    model, cfg = load_run(args.run, args.device)
    prompt = args.prompt.encode("utf-8")
    tokenizer = load_tokenizer(cfg.tokenizer, args.run)
    total = len(tokenizer.encode(prompt)) + args.max_new_tokens
    if cfg.model.mixer == "attention" and total > cfg.context:  # recurrent mixers carry their state past it
        print(f"note: attention was trained on {cfg.context}-token windows; this prompt + --max-new-tokens reach "
              f"{total} tokens, and past {cfg.context} its positions (RoPE) are extrapolated", file=sys.stderr)
    sys.stdout.write(args.prompt)
    write = stdout_writer()
    stream_generate(model, prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                    write=write, tokenizer=tokenizer,
                    stop=None if args.stop is None else args.stop.encode("utf-8"))  # fmt: skip
    write(b"", final=True)  # a multi-byte character cut short by the last token: U+FFFD, not dropped
    print(flush=True)
    return 0


def run_export(args: argparse.Namespace) -> int:
    from innerloop.train.hf_runs import export_run, quiet_transformers

    quiet_transformers()
    out = export_run(args.run, args.to_hf)
    print(f"{out}: transformers model (import innerloop.models.hf, then AutoModelForCausalLM.from_pretrained)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from innerloop.train.hf_runs import import_run, quiet_transformers

    quiet_transformers()
    out = import_run(args.from_hf, args.out)
    print(f"{out}: run directory (innerloop lm eval --run {out}, innerloop lm generate --run {out})")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from innerloop.train.compare import compare, format_table

    sized = [f"--{f.replace('_', '-')}" for f in ("hidden_size", "intermediate_size") if getattr(args, f) is not None]
    if args.target_params and sized:  # size_for_params sets both per mixer: a given width would be silently replaced
        raise ValueError(f"--target-params chooses each mixer's hidden size (intermediate 2x): drop "
                         f"{' and '.join(sized)}, or drop --target-params to train every mixer at the width given")
    out = args.out or f"runs/compare/{_stamp()}"
    cfg = _config(args, _SKIP_COMPARE, out=out)
    print(f"innerloop lm compare: {', '.join(args.mixers)}"
          f"{f' at ~{args.target_params:,.0f} params' if args.target_params else ''}, {cfg.steps} steps x "
          f"{cfg.batch_size} x {cfg.context} tokens each, out {out}", flush=True)  # fmt: skip
    rows = compare(cfg, args.mixers, out, int(args.target_params), progress=not args.no_progress,
                   fresh=args.fresh, extend=args.extend)
    print(format_table(rows))
    print(f"written: {out}/results.md, results.csv, loss_curves.png")
    return 0
