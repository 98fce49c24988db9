"""Robot-action trajectories: a planar 2-link arm reaching random targets, simulated here (no data files).

Kinematics: joint angles ``q = (q1, q2)``, links ``l1 = 1.0``, ``l2 = 0.7``; end effector
``p = (l1 cos q1 + l2 cos(q1 + q2), l1 sin q1 + l2 sin(q1 + q2))``. A trajectory starts at random angles and moves
toward a random reachable target ``p*`` (the forward kinematics of random angles) under damped-least-squares
resolved-rate control, ``dq = J^T (J J^T + λ² I)^{-1} k (p* - p)``, each joint step clipped to ``max_step`` rad.

Task ``"arm"`` (regression; ``length`` = ``T`` steps): ``inputs [B, T, 6] = (sin q1, cos q1, sin q2, cos q2, p*)``
at steps ``0 .. T-1``; ``targets [B, T, 2] = (q_{t+1} - q_t) / max_step`` (the next joint angles, as the normalised
step); every position scored. Baseline "hold still" (predict 0): its MSE, measured on a fixed batch.
The task's ``context`` and ``horizon`` options set the rollouts that :mod:`innerloop.synth.arm` runs with a trained
model (read ``context`` true steps, then feed the model its own predictions for ``horizon`` steps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import SynthBatch, SyntheticTask, register_task

__all__ = ["ArmTrajectory", "arm_features", "forward_kinematics", "simulate"]

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


def arm_features(q: Tensor, target: Tensor) -> Tensor:
    """Model inputs ``[..., 6] = (sin q1, cos q1, sin q2, cos q2, p*)`` of joint angles ``q [..., 2]`` and target
    ``[..., 2]``."""
    return torch.cat([torch.sin(q), torch.cos(q), target], -1)[..., [0, 2, 1, 3, 4, 5]]


class ArmTrajectory(SyntheticTask):
    """Next-joint-angle prediction on simulated 2-link-arm reaching (see the module docstring).

    Args:
        max_step (float, Optional): joint speed limit per step (rad); also the target scale. Default: 0.1.
        context (int, Optional): true steps read before a rollout (:mod:`innerloop.synth.arm`). Default: 8.
        horizon (int, Optional): rollout steps (:mod:`innerloop.synth.arm`). Default: 24.
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
        inputs = arm_features(q[:, :-1], target.unsqueeze(1).expand(B, T, 2))
        targets = (q[:, 1:] - q[:, :-1]) / self.max_step
        return SynthBatch(inputs, targets, torch.ones(B, T, dtype=torch.bool))

    def baseline(self, length: int) -> dict[str, float]:
        b = self._sample(512, length, torch.Generator().manual_seed(1234))
        return {"mse": float((b.targets**2).mean())}


register_task(ArmTrajectory)
