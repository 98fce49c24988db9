"""Rollouts of a trained model on the 2-link-arm task (:mod:`innerloop.data.synthetic.arm`): error vs horizon, plot.

A rollout reads the first ``task.context`` true steps (inputs at ``q_0 .. q_{c-1}``), then predicts ``task.horizon``
steps from the true ``q_c`` on, each input after the first being its own previous prediction (so horizon 1 is a
one-step prediction from true angles, horizon ``h`` has fed back ``h - 1`` predictions). :func:`arm_report` writes the
joint-angle error (rad) per horizon step (``rollout.csv``) and a plot of predicted vs true end-effector paths
(``trajectories.png``); the harness runs it after training on ``arm``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from innerloop._io import pyplot, write_csv
from innerloop.data.synthetic.arm import ArmTrajectory, arm_features, forward_kinematics

__all__ = ["arm_report", "rollout"]


@torch.no_grad()
def rollout(task: ArmTrajectory, model: nn.Module, B: int, g: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Roll ``model`` (``inputs [B, T, 6], state -> (steps [B, T, 2], state)``) out on ``B`` fresh trajectories.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``q_true [B, c + h + 1, 2]``, ``q_pred [B, c + h + 1, 2]`` (true for the first
        ``c + 1`` steps) and ``target [B, 2]``, with ``c = task.context`` and ``h = task.horizon``.
    """
    c, h = task.context, task.horizon
    q, target = task.trajectories(B, c + h, g)
    tgt = target.unsqueeze(1)
    out, state = model(arm_features(q[:, :c], tgt.expand(B, c, 2)))
    pred = [q[:, : c + 1]]
    cur = q[:, c]
    for _ in range(h):
        step, state = model(arm_features(cur.unsqueeze(1), tgt), state)
        cur = cur + step[:, 0] * task.max_step
        pred.append(cur.unsqueeze(1))
    return q, torch.cat(pred, 1), target


def arm_report(task: ArmTrajectory, model: nn.Module, out: str | Path, g: torch.Generator | None,
               batch_size: int = 256) -> dict[str, float]:  # fmt: skip
    """Rollout error vs horizon (``out/rollout.csv``) and predicted vs true paths (``out/trajectories.png``).

    Returns:
        dict[str, float]: the error at horizons 1, 5 and ``task.horizon`` (``err_h<n>``) and the hold-still
        baseline's at ``task.horizon``.
    """
    model.eval()
    q, pred, target = rollout(task, model, batch_size, g)
    model.train()
    c = task.context
    err = (pred[:, c + 1 :] - q[:, c + 1 :]).abs().mean((0, 2))  # [h] rad
    still = (q[:, c : c + 1] - q[:, c + 1 :]).abs().mean((0, 2))  # hold-still baseline
    out = Path(out)
    write_csv([{"horizon": i + 1, "joint_abs_err_rad": f"{e:.5f}", "hold_still_err_rad": f"{s:.5f}"}
               for i, (e, s) in enumerate(zip(err.tolist(), still.tolist()))], out / "rollout.csv")  # fmt: skip
    _plot(q, pred, target, c, out / "trajectories.png")
    pick = sorted({1, min(5, task.horizon), task.horizon})
    return {f"err_h{h}": float(err[h - 1]) for h in pick} | {f"hold_still_h{task.horizon}": float(still[-1])}


def _plot(q: Tensor, pred: Tensor, target: Tensor, c: int, path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    for i, ax in enumerate(axes):
        pt, pp = forward_kinematics(q[i]), forward_kinematics(pred[i])
        ax.plot(pt[:, 0], pt[:, 1], "k-", label="true")
        ax.plot(pp[c:, 0], pp[c:, 1], "r--", label="predicted (rollout)")
        ax.plot(*target[i].tolist(), "g*", ms=12, label="target")
        ax.plot(pt[c, 0], pt[c, 1], "bo", ms=4, label="rollout start")
        ax.set_aspect("equal")
        ax.set_xlim(-1.8, 1.8)
        ax.set_ylim(-1.8, 1.8)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("2-link arm: end-effector path, true vs model rollout")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
