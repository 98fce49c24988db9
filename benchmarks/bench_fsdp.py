"""DDP against FSDP for the LM trainer on N processes: seconds per optimizer step, and the bytes of parameters,
gradients and AdamW state each rank holds (where FSDP wins: that state is divided by N).

Both trainers live in each process and their steps alternate round by round, so the two columns are measured under
the same load. The model is the LM trainer's own (``innerloop.train.Trainer``: AdamW, clipping, accumulation); the
batches are random tokens. Memory is counted from the tensors each rank holds between backward and the optimizer
step (local shards under FSDP); it leaves out activations, DDP's gradient buckets (one more copy of the gradients)
and FSDP's transient all-gathered blocks (about one block's weights at a time).

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/bench_fsdp.py                  # CPU, gloo
    torchrun --standalone --nproc_per_node=8 benchmarks/bench_fsdp.py --device cuda --hidden-size 1024 --layers 12
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
from _timing import environment
from torch import nn

from innerloop.eval.lm import lm_loss
from innerloop.models.lm import CausalLM
from innerloop.train import TrainConfig, Trainer
from innerloop.train.distributed import cleanup_distributed, setup_distributed


def local_bytes(tensors) -> int:
    """Bytes this rank stores for ``tensors`` (a DTensor's local shard only)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    grads = [p.grad for p in params if p.grad is not None]
    return {"params": local_bytes(params), "grads": local_bytes(grads), "adamw": local_bytes(state)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mixer", default="attention")
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="global sequences per step")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per mode (after 2 warm-up steps)")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    info = setup_distributed(args.device)
    if not info.enabled:
        raise SystemExit("run under torchrun with >= 2 processes (see the module docstring)")
    local = args.batch_size // info.world_size
    gen = torch.Generator().manual_seed(0)
    trainers, models, measured = {}, {}, {}
    for mode in ("ddp", "fsdp"):
        cfg = TrainConfig.from_flat(mixer=args.mixer, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                                    num_attention_heads=4, context=args.context, batch_size=args.batch_size,
                                    steps=args.steps + 2, warmup_steps=1, parallel=mode, device=args.device,
                                    out=tempfile.mkdtemp(prefix=f"bench_fsdp_{mode}_"))  # fmt: skip
        torch.manual_seed(0)
        models[mode] = CausalLM(cfg.model).to(info.device)

        def batch_fn(step: int, cfg: TrainConfig = cfg) -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randint(0, 256, (local, cfg.context + 1), generator=gen).to(info.device)
            return x[:, :-1], x[:, 1:]

        trainers[mode] = Trainer(models[mode], cfg, batch_fn, lm_loss, dist_info=info)
        trainers[mode].resume()  # nothing to resume: shards the FSDP model and builds its optimizer
    times: dict[str, list[float]] = {"ddp": [], "fsdp": []}
    for step in range(args.steps + 2):
        for mode, trainer in trainers.items():
            dist.barrier()
            t0 = time.perf_counter()
            trainer.train_step(step)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            if step >= 2:
                times[mode].append(time.perf_counter() - t0)
    for mode, trainer in trainers.items():  # one more backward to count the gradients the step holds
        x, y = trainer.batch_fn(0)
        lm_loss(trainer.model if mode == "fsdp" else trainer.ddp_model, x, y).backward()
        measured[mode] = held_bytes(trainer.model, trainer.optimizer)
        trainer.optimizer.zero_grad(set_to_none=True)
    whole = sum(p.numel() for p in CausalLM(trainers["ddp"].cfg.model).parameters())
    row = {"rank": info.rank, "world_size": info.world_size, "params": whole, **environment(), "args": vars(args),
           **{f"{m}_step_s": statistics.median(t) for m, t in times.items()},
           **{f"{m}_{k}_bytes": v for m, b in measured.items() for k, v in b.items()}}  # fmt: skip
    rows = [None] * info.world_size
    dist.all_gather_object(rows, row)
    if info.is_main:
        print(f"{whole:,} parameters, {info.world_size} processes, device {info.device}, median of {args.steps} steps")
        print("| rank | DDP s/step | FSDP s/step | FSDP / DDP | DDP MB (params+grads+AdamW) | FSDP MB | FSDP / DDP |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            d = sum(r[f"ddp_{k}_bytes"] for k in ("params", "grads", "adamw")) / 2**20
            f = sum(r[f"fsdp_{k}_bytes"] for k in ("params", "grads", "adamw")) / 2**20
            print(f"| {r['rank']} | {r['ddp_step_s']:.3f} | {r['fsdp_step_s']:.3f} | "
                  f"{r['fsdp_step_s'] / r['ddp_step_s']:.2f} | {d:.2f} | {f:.2f} | {f / d:.2f} |")  # fmt: skip
        print(json.dumps({k: v for k, v in rows[0].items() if k not in ("args",)}, default=str))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=1)
    cleanup_distributed()


if __name__ == "__main__":
    main()
