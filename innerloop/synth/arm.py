"""Robot-action trajectories: a planar 2-link arm reaching random targets, simulated here (no data files).

Kinematics: joint angles ``q = (q1, q2)``, links ``l1 = 1.0``, ``l2 = 0.7``; end effector
``p = (l1 cos q1 + l2 cos(q1 + q2), l1 sin q1 + l2 sin(q1 + q2))``. A trajectory starts at random angles and moves
toward a random reachable target ``p*`` (the forward kinematics of random angles) under damped-least-squares
resolved-rate control, ``dq = J^T (J J^T + λ² I)^{-1} k (p* - p)``, each joint step clipped to ``max_step`` rad.

Task ``"arm"`` (regression; ``length`` = ``T`` steps): ``inputs [B, T, 6] = (sin q1, cos q1, sin q2, cos q2, p*)``
at steps ``0 .. T-1``; ``targets [B, T, 2] = (q_{t+1} - q_t) / max_step`` (the next joint angles, as the normalised
step); every position scored. Baseline "hold still" (predict 0): its MSE, measured on a fixed batch.
Rollouts (:meth:`ArmTrajectory.report`): read the first ``context`` true steps, then feed the model its own
predicted angles for ``horizon`` steps; joint-angle error (rad) vs horizon, and a plot of predicted vs true paths.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch import Tensor

from innerloop._io import pyplot
from innerloop.data.synthetic import TASKS, SynthBatch, SyntheticTask

__all__ = ["ArmTrajectory", "forward_kinematics", "simulate"]

L1, L2 = 1.0, 0.7


def forward_kinematics(q: Tensor) -> Tensor:
    """Joint angles ``[..., 2]`` -> end-effector position ``[..., 2]``."""
    a, b = q[..., 0], q[..., 0] + q[..., 1]
    return torch.stack([L1 * torch.cos(a) + L2 * torch.cos(b), L1 * torch.sin(a) + L2 * torch.sin(b)], -1)


def _jacobian(q: Tensor) -> Tensor:
    a, b = q[..., 0], q[..., 0] + q[..., 1]
    j = torch.stack([
        torch.stack([-L1 * torch.sin(a) - L2 * torch.sin(b), -L2 * torch.sin(b)], -1),
        torch.stack([L1 * torch.cos(a) + L2 * torch.cos(b), L2 * torch.cos(b)], -1),
    ], -2)
    return j  # [..., 2 (xy), 2 (joints)]


def simulate(q0: Tensor, target: Tensor, steps: int, gain: float = 0.3, damping: float = 0.1,
             max_step: float = 0.1) -> Tensor:
    """Joint-angle trajectory ``[B, steps + 1, 2]`` from ``q0 [B, 2]`` toward ``target [B, 2]`` (xy)."""
    qs = [q0]
    q = q0
    eye = torch.eye(2)
    for _ in range(steps):
        J = _jacobian(q)
        err = gain * (target - forward_kinematics(q))  # [B, 2]
        JJt = J @ J.transpose(-1, -2) + damping**2 * eye
        dq = (J.transpose(-1, -2) @ torch.linalg.solve(JJt, err.unsqueeze(-1))).squeeze(-1)
        q = q + dq.clamp(-max_step, max_step)
        qs.append(q)
    return torch.stack(qs, 1)


def _features(q: Tensor, target: Tensor) -> Tensor:
    return torch.cat([torch.sin(q), torch.cos(q), target], -1)[..., [0, 2, 1, 3, 4, 5]]


class ArmTrajectory(SyntheticTask):
    """Next-joint-angle prediction on simulated 2-link-arm reaching (see the module docstring).

    Args:
        max_step (float, Optional): joint speed limit per step (rad); also the target scale. Default: 0.1.
        context (int, Optional): true steps read before a rollout. Default: 8.
        horizon (int, Optional): rollout steps. Default: 24.
    """

    name = "arm"
    kind = "regression"
    in_features, out_features = 6, 2

    def __init__(self, max_step: float = 0.1, context: int = 8, horizon: int = 24) -> None:
        if not max_step > 0 or context < 1 or horizon < 1:
            raise ValueError(f"need max_step > 0, context >= 1, horizon >= 1; got {max_step}, {context}, {horizon}")
        self.max_step, self.context, self.horizon = max_step, context, horizon

    def trajectories(self, B: int, T: int, g: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """``(q [B, T + 1, 2], target [B, 2])``."""
        q0 = (torch.rand(B, 2, generator=g) * 2 - 1) * torch.tensor([torch.pi, 2.5])
        qt = (torch.rand(B, 2, generator=g) * 2 - 1) * torch.tensor([torch.pi, 2.5])
        target = forward_kinematics(qt)
        return simulate(q0, target, T, max_step=self.max_step), target

    def _sample(self, B: int, T: int, g: torch.Generator | None) -> SynthBatch:
        q, target = self.trajectories(B, T, g)
        inputs = _features(q[:, :-1], target.unsqueeze(1).expand(B, T, 2))
        targets = (q[:, 1:] - q[:, :-1]) / self.max_step
        return SynthBatch(inputs, targets, torch.ones(B, T, dtype=torch.bool))

    def baseline(self, length: int) -> dict[str, float]:
        b = self._sample(512, length, torch.Generator().manual_seed(1234))
        return {"mse": float((b.targets**2).mean())}

    @torch.no_grad()
    def rollout(self, model, B: int, g: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(q_true [B, c + h + 1, 2], q_pred [B, c + h + 1, 2], target [B, 2])``: true for the first ``c + 1``."""
        c, h = self.context, self.horizon
        q, target = self.trajectories(B, c + h, g)
        tgt = target.unsqueeze(1)
        out, state = model(_features(q[:, :c], tgt.expand(B, c, 2)))
        pred = [q[:, : c + 1]]
        cur = q[:, c]
        for _ in range(h):
            step, state = model(_features(cur.unsqueeze(1), tgt), state)
            cur = cur + step[:, 0] * self.max_step
            pred.append(cur.unsqueeze(1))
        return q, torch.cat(pred, 1), target

    def report(self, model, out: Path, g: torch.Generator | None, batch_size: int = 256) -> dict:
        """Rollout error vs horizon (``rollout.csv``), a plot of predicted vs true paths (``trajectories.png``)."""
        model.eval()
        q, pred, target = self.rollout(model, batch_size, g)
        model.train()
        c = self.context
        err = (pred[:, c + 1 :] - q[:, c + 1 :]).abs().mean((0, 2))  # [h] rad
        still = (q[:, c : c + 1] - q[:, c + 1 :]).abs().mean((0, 2))  # hold-still baseline
        out = Path(out)
        with open(out / "rollout.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["horizon", "joint_abs_err_rad", "hold_still_err_rad"])
            for i, (e, s) in enumerate(zip(err.tolist(), still.tolist())):
                w.writerow([i + 1, f"{e:.5f}", f"{s:.5f}"])
        _plot(q, pred, target, c, out / "trajectories.png")
        pick = sorted({1, min(5, self.horizon), self.horizon})
        return {f"err_h{h}": float(err[h - 1]) for h in pick} | {f"hold_still_h{self.horizon}": float(still[-1])}


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


TASKS.setdefault(ArmTrajectory.name, ArmTrajectory)
