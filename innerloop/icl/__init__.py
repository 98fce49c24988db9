"""In-context learners vs gradient-based learners on the same task distributions.

- :mod:`.tasks`: sinusoid (MAML) and linear-regression (Garg et al. 2022) tasks in the :class:`TaskBatch` layout,
  with out-of-distribution variants;
- :mod:`.omniglot`: Omniglot N-way K-shot (:class:`OmniglotTasks`): held-out characters of the training alphabets in
  distribution, unseen alphabets out of it (:func:`alphabet_split`);
- :mod:`.model`: :class:`ICLModel`, any registered mixer reading the support set and answering each query from it
  (images through an :class:`ImageEncoder`, labels one-hot);
- :mod:`.learners`: both kinds of learner behind one interface;
- :mod:`.trainer`: meta-training any learner on the run scaffold (:class:`ICLConfig`, :func:`train`);
- :mod:`.compare`: every learner at an equal budget of training tasks, one table and plots (:func:`compare`).
"""

from .compare import compare
from .learners import GradientLearner, InContextLearner, build_learner, learner_kind
from .model import ICLModel, ImageEncoder, repeat_state
from .omniglot import OmniglotTasks, alphabet_split
from .tasks import TASKS, LinearRegressionTasks, OODSinusoidTasks, make_tasks
from .trainer import ICLConfig, ICLTrainer, evaluate, train

__all__ = [
    "TASKS", "GradientLearner", "ICLConfig", "ICLModel", "ICLTrainer", "ImageEncoder", "InContextLearner",
    "LinearRegressionTasks", "OODSinusoidTasks", "OmniglotTasks", "alphabet_split", "build_learner", "compare",
    "evaluate", "learner_kind", "make_tasks", "repeat_state", "train",
]  # fmt: skip
