"""Learning to reinforcement-learn: RL² task environments, trials, and the classic baselines they are measured by.

``from innerloop.rl import BernoulliBandit, TabularMDP, Navigation2D, TrialEnv`` — batched envs in torch (B tasks
stepped together) and the RL² trial wrapper; :mod:`innerloop.rl.gym` has gymnasium wrappers (``innerloop[rl]``).
``innerloop rl baselines --env bandit --arms 5 --pulls 10`` evaluates the classic strategies
(:mod:`innerloop.rl.bandit_baselines`, :mod:`innerloop.rl.mdp_baselines`).
MAML for RL (Gaussian MLP policy, TRPO through a policy-gradient inner step) is :mod:`innerloop.rl.maml`
(``innerloop rl maml-train`` / ``maml-eval``).
"""

from .envs import BatchedTaskEnv, BernoulliBandit, Navigation2D, TabularMDP
from .evaluate import BASELINES, BaselineResult, evaluate_baselines, run_bandit_trials, run_mdp_trials
from .maml import GaussianMLPPolicy, MamlRLConfig, trpo_step
from .trial import TrialEnv, rl2_input

__all__ = ["BASELINES", "BaselineResult", "BatchedTaskEnv", "BernoulliBandit", "Navigation2D", "TabularMDP",
           "TrialEnv", "evaluate_baselines", "rl2_input", "run_bandit_trials", "run_mdp_trials"]
__all__ += ["GaussianMLPPolicy", "MamlRLConfig", "trpo_step"]  # MAML for RL (innerloop.rl.maml)
