"""Pure-torch repro of the bug behind MAML's vmap guard: second-order gradients through ``F.layer_norm`` (with an
affine weight) and ``F.batch_norm`` are wrong under ``torch.func.vmap``. No innerloop code; float64.

One MAML-style inner step per task (``torch.func.grad``), the query loss at the adapted weights, then
``torch.autograd.grad`` outside: vmap over the tasks vs a Python loop over them. With a correct torch every relative
error printed is ~1e-16; with torch 2.13.0+cpu the weight *before* the norm is off by 1.4e-1 (layer_norm) and
8.7e-2 (batch_norm). Run it on a new torch before relaxing ``MAML._vectorize_for`` (innerloop/meta/maml.py), and
attach its output to an upstream report.

    python scripts/torch_vmap_norm_repro.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import grad, vmap


def hand_layer_norm(h, p):
    mu, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    return (h - mu) / torch.sqrt(var + 1e-5) * p["g"] + p["b"]


NORMS = {
    "F.layer_norm(weight, bias)": lambda h, p: F.layer_norm(h, (8,), p["g"], p["b"]),
    "F.layer_norm, no affine": lambda h, p: F.layer_norm(h, (8,)),
    "F.batch_norm(training, weight, bias)": lambda h, p: F.batch_norm(h, None, None, p["g"], p["b"], training=True),
    "hand-written layer norm": hand_layer_norm,
}


def main() -> None:
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    params = {"W": torch.randn(3, 8, requires_grad=True), "g": (1 + 0.1 * torch.randn(8)).requires_grad_(),
              "b": (0.1 * torch.randn(8)).requires_grad_()}  # fmt: skip
    xs, ys, xq, yq = torch.randn(4, 5, 3), torch.randn(4, 5, 8), torch.randn(4, 5, 3), torch.randn(4, 5, 8)
    print(f"torch {torch.__version__}: relative error of vmap vs loop, per parameter")
    for name, norm in NORMS.items():
        def loss(p, x, y, norm=norm):
            return ((torch.relu(norm(x @ p["W"], p)) - y) ** 2).mean()

        def task(xs, ys, xq, yq, loss=loss):
            g = grad(loss)(params, xs, ys)
            return loss({k: params[k] - 0.5 * g[k] for k in params}, xq, yq)

        names = list(params)
        gv = torch.autograd.grad(vmap(task)(xs, ys, xq, yq).sum(), list(params.values()), allow_unused=True)
        gl = torch.autograd.grad(sum(task(xs[i], ys[i], xq[i], yq[i]) for i in range(4)), list(params.values()),
                                 allow_unused=True)  # fmt: skip
        errs = {k: f"{((a - c).norm() / c.norm()).item():.1e}" for k, a, c in zip(names, gv, gl) if c is not None}
        print(f"  {name:38s} {errs}")


if __name__ == "__main__":
    main()
