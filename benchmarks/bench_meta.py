"""Meta-iterations/s of the vectorised functional core against a per-task loop of the same algorithm.

The loop baseline is the learn2learn / higher way: for each task ``learner = maml.clone()``, ``learner.adapt(loss)``
with ``torch.autograd.grad(create_graph=True)``, query loss, then one backward over the summed task losses. Both
compute identical meta-gradients (checked here before timing, and in tests/meta/test_algorithms.py). Inputs are built
outside the timer; each variant is warmed up, then rounds are interleaved and the median ms/iteration reported.

    OMP_NUM_THREADS=1 python benchmarks/bench_meta.py            # sinusoid + Omniglot 5-way 1-shot, CPU
    python benchmarks/bench_meta.py --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from innerloop.data import SinusoidTasks, TaskBatch
from innerloop.meta import MAML
from innerloop.models.meta_nets import SinusoidMLP, omniglot_cnn


def loop_meta_loss(maml: MAML, batch: TaskBatch, steps: int) -> torch.Tensor:
    """Mean query loss the learn2learn/higher way: one clone per task, adapted in a Python loop."""
    total = 0.0
    for i in range(len(batch)):
        learner = maml.clone()
        for _ in range(steps):
            learner.adapt(maml.loss_fn(learner(batch.support_x[i]), batch.support_y[i]))
        total = total + maml.loss_fn(learner(batch.query_x[i]), batch.query_y[i])
    return total / len(batch)


def loop_step(maml: MAML, batch: TaskBatch, steps: int, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    loop_meta_loss(maml, batch, steps).backward()
    opt.step()


def vmap_step(maml: MAML, batch: TaskBatch, steps: int, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    maml.meta_loss(batch).loss.backward()
    opt.step()


def omniglot_batch(tasks: int, ways: int, shots: int, device: str) -> TaskBatch:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(tasks, 2 * ways * shots, 1, 28, 28, generator=g) > 0.8).float()
    y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 2)
    k = ways * shots
    return TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:]).to(device)


def check_same_grads(maml: MAML, batch: TaskBatch, steps: int) -> float:
    params = list(maml.parameters())
    g1 = torch.autograd.grad(maml.meta_loss(batch).loss, params)
    g2 = torch.autograd.grad(loop_meta_loss(maml, batch, steps), params)
    return max((a - b).abs().max().item() for a, b in zip(g1, g2))


def bench(name: str, maml: MAML, batch: TaskBatch, steps: int, iters: int, rounds: int, device: str) -> dict:
    diff = check_same_grads(maml, batch, steps)
    opt = torch.optim.SGD(maml.parameters(), lr=0.0)  # lr 0: time the full step without drifting the weights
    times: dict[str, list[float]] = {"loop": [], "vmap": []}
    fns = {"loop": loop_step, "vmap": vmap_step}
    for fn in fns.values():
        for _ in range(3):
            fn(maml, batch, steps, opt)
    for _ in range(rounds):
        for key, fn in fns.items():
            for _ in range(iters):
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                fn(maml, batch, steps, opt)
                if device == "cuda":
                    torch.cuda.synchronize()
                times[key].append(time.perf_counter() - t)
    loop_ms, vmap_ms = (1e3 * statistics.median(times[k]) for k in ("loop", "vmap"))
    return {"case": name, "loop_ms": loop_ms, "vmap_ms": vmap_ms, "loop_its": 1e3 / loop_ms,
            "vmap_its": 1e3 / vmap_ms, "speedup": loop_ms / vmap_ms, "max_grad_diff": diff}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--iters", type=int, default=20, help="timed iterations per round and variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default="")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    a = p.parse_args()
    torch.manual_seed(0)
    rows = []
    sin = SinusoidTasks(shots=10).batch(0, 4 if a.quick else 25).to(a.device)
    for fo in (False, True):
        maml = MAML(SinusoidMLP().to(a.device), lr=0.01, first_order=fo, loss_fn=F.mse_loss)
        rows.append(bench(f"sinusoid MAML{' (FO)' if fo else ''}, 25 tasks, 10-shot, 1 step", maml, sin, 1,
                          a.iters, a.rounds, a.device))  # fmt: skip
    omni = omniglot_batch(2 if a.quick else 32, 5, 1, a.device)
    maml = MAML(omniglot_cnn(5).to(a.device), lr=0.4)
    rows.append(bench("Omniglot 5w1s MAML, 32 tasks, 1 step", maml, omni, 1, max(a.iters // 4, 2), a.rounds, a.device))
    print(f"torch {torch.__version__}, device {a.device}, {platform.processor() or platform.machine()}, "
          f"threads {torch.get_num_threads()}")  # fmt: skip
    print("| case | per-task loop ms/it | vmap ms/it | loop it/s | vmap it/s | speed-up | max grad diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['loop_ms']:.1f} | {r['vmap_ms']:.1f} | {r['loop_its']:.1f} | {r['vmap_its']:.1f} "
              f"| **{r['speedup']:.2f}x** | {r['max_grad_diff']:.1e} |")  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": a.device, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
