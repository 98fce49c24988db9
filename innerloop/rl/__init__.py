"""Learning to reinforcement-learn: RL² task environments, trials, and the classic baselines they are measured by.

``from innerloop.rl import BernoulliBandit, TabularMDP, Navigation2D, TrialEnv`` — batched envs in torch (B tasks
stepped together) and the RL² trial wrapper; :mod:`innerloop.rl.gym` has gymnasium wrappers (``innerloop[rl]``).
``innerloop rl baselines --env bandit --arms 5 --pulls 10`` evaluates the classic strategies
(:mod:`innerloop.rl.bandit_baselines`, :mod:`innerloop.rl.mdp_baselines`).
MAML for RL (Gaussian MLP policy, TRPO through a policy-gradient inner step) is :mod:`innerloop.rl.maml`
(``innerloop rl maml-train`` / ``maml-eval``).

RL²: :class:`RL2Policy` (any mixer as the memory), PPO + GAE (:mod:`innerloop.rl.ppo`) and the trainer
(:mod:`innerloop.rl.rl2_trainer`; ``innerloop rl train --algo rl2``).
"""

from .envs import BatchedTaskEnv, BernoulliBandit, Navigation2D, TabularMDP
from .evaluate import (
    BASELINES,
    BaselineResult,
    evaluate_baselines,
    play_bandit_trials,
    run_bandit_trials,
    run_mdp_trials,
)
from .maml import GaussianMLPPolicy, MamlRLConfig, trpo_step
from .ppo import PPOLoss, ValueNormalizer, gae, normalize, ppo_loss
from .rl2 import RL2Policy, Rollout, rollout
from .rl2_trainer import RL2Config, RL2Trainer, build_rl2, evaluate_rl2, load_rl2, train_rl2
from .trial import TrialEnv, rl2_input

__all__ = ["BASELINES", "BaselineResult", "BatchedTaskEnv", "BernoulliBandit", "Navigation2D", "TabularMDP",
           "TrialEnv", "evaluate_baselines", "play_bandit_trials", "rl2_input", "run_bandit_trials", "run_mdp_trials"]
__all__ += ["GaussianMLPPolicy", "MamlRLConfig", "trpo_step"]  # MAML for RL (innerloop.rl.maml)
__all__ += ["PPOLoss", "RL2Config", "RL2Policy", "RL2Trainer", "Rollout", "build_rl2", "evaluate_rl2", "gae",
            "load_rl2", "normalize", "ppo_loss", "rollout", "train_rl2", "ValueNormalizer"]  # RL² with PPO
