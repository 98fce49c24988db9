"""The 2-link-arm trajectory task: kinematics, simulation reaching its target, registration by name."""

import pytest
import torch

from innerloop.data.synthetic import TASKS, SyntheticTask, make_task, register_task
from innerloop.data.synthetic.arm import ArmTrajectory, arm_features, forward_kinematics, simulate


def test_arm_simulation_reaches_target():
    g = torch.Generator().manual_seed(0)
    task = ArmTrajectory()
    q, target = task.trajectories(64, 120, g)
    start = (forward_kinematics(q[:, 0]) - target).norm(dim=-1)
    end = (forward_kinematics(q[:, -1]) - target).norm(dim=-1)
    assert (end < start).float().mean() > 0.9 and end.median() < 0.05
    assert (q[:, 1:] - q[:, :-1]).abs().max() <= task.max_step + 1e-6
    # forward kinematics at known angles
    fk = forward_kinematics(torch.tensor([[0.0, 0.0], [torch.pi / 2, -torch.pi / 2]]))
    torch.testing.assert_close(fk, torch.tensor([[1.7, 0.0], [0.7, 1.0]]), atol=1e-6, rtol=0)
    assert simulate(torch.zeros(2, 2), torch.tensor([[0.0, 1.0]] * 2), 3).shape == (2, 4, 2)


def test_arm_batch_layout_and_registration():
    task = make_task("arm", horizon=5, context=3)
    assert isinstance(task, ArmTrajectory) and TASKS["arm"] is ArmTrajectory
    b = task.sample(3, 7, torch.Generator().manual_seed(0))
    assert b.inputs.shape == (3, 7, 6) and b.targets.shape == (3, 7, 2) and b.mask.all()
    q, target = task.trajectories(3, 7, torch.Generator().manual_seed(0))  # the same draws as the batch
    torch.testing.assert_close(b.inputs, arm_features(q[:, :-1], target.unsqueeze(1).expand(3, 7, 2)))
    torch.testing.assert_close(b.targets, (q[:, 1:] - q[:, :-1]) / task.max_step)


def test_register_task_errors():
    class Nameless(SyntheticTask):
        pass

    class Impostor(SyntheticTask):
        name = "copy"

    with pytest.raises(ValueError, match="has no name"):
        register_task(Nameless)
    with pytest.raises(ValueError, match="'copy' is already registered"):
        register_task(Impostor)
    assert register_task(ArmTrajectory) is ArmTrajectory  # registering the same class again is a no-op
