"""MAML for reinforcement learning (Finn et al. 2017 §5.3): a Gaussian MLP policy meta-learned so that one or a few
policy-gradient steps on K trajectories of a new task (2D navigation goal, half-cheetah velocity or direction)
adapt it; the outer step is TRPO through the inner step.

``innerloop rl maml-train --env navigation2d --out runs/nav-maml`` trains; ``innerloop rl maml-eval --out
runs/nav-maml --pretrained runs/nav-pretrained`` reports the return after 0..3 steps against the jointly pretrained
policy and the random initialisation. The cheetah tasks need ``pip install 'innerloop[mujoco]'``.
"""

from innerloop.rl.maml.algorithm import (
    MetaBatch,
    adapt_tasks,
    adaptation_returns,
    inner_loss,
    meta_objective,
    sample_meta_batch,
)
from innerloop.rl.maml.episodes import Episodes, discounted_returns, fit_linear_baseline, linear_features, rollout
from innerloop.rl.maml.policy import GaussianMLPPolicy, gaussian_kl, gaussian_log_prob
from innerloop.rl.maml.tasks import FAMILIES, TaskFamily, make_family
from innerloop.rl.maml.trainer import MamlRLConfig, MamlRLTrainer, evaluate_policies, evaluate_run, train
from innerloop.rl.maml.trpo import TRPOStats, trpo_step

__all__ = [
    "FAMILIES", "Episodes", "GaussianMLPPolicy", "MamlRLConfig", "MamlRLTrainer", "MetaBatch", "TRPOStats",
    "TaskFamily", "adapt_tasks", "adaptation_returns", "discounted_returns", "evaluate_policies", "evaluate_run",
    "fit_linear_baseline", "gaussian_kl", "gaussian_log_prob", "inner_loss", "linear_features", "make_family",
    "meta_objective", "rollout", "sample_meta_batch", "train", "trpo_step",
]  # fmt: skip
