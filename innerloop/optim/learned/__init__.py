"""Learned update rules: ``nn.Module``\\ s with ``init(params) -> state`` and ``update(grads, state, params, step) ->
(updates, state)``, so they plug into every inner loop of innerloop (``MAML(model, rule=LSTMRule())``) and into
:class:`innerloop.optim.LearnedOptimizer` (a ``torch.optim`` drop-in).

- :class:`LSTMRule`: the coordinatewise LSTM optimizer of Andrychowicz et al. 2016, with :func:`log_and_sign`.
- :class:`MLPRule`: a per-parameter MLP optimizer in the style of Metz et al. (learned_optimization's ``mlp_lopt``).
- :class:`TinyRule`: a 4-unit per-coordinate MLP on 7 features with a C-kernel step about as cheap as Adam's.
- :class:`LearnedRule`: their ``nn.Module`` base (``rule(...)`` calls ``update``). A rule of your own needs only
  ``init``/``update`` (:class:`innerloop.optim.UpdateRule`); subclass this for a module with learned weights.

All keep their state as a dict ``{parameter name: {field: Tensor [numel, ...]}}`` built by ``init`` only.
"""

from innerloop.optim.learned._common import LearnedRule
from innerloop.optim.learned.lstm import PREPROCESS, LSTMRule, log_and_sign
from innerloop.optim.learned.mlp import MLPRule
from innerloop.optim.learned.tiny import TinyRule

RULES = {"LSTMRule": LSTMRule, "MLPRule": MLPRule, "TinyRule": TinyRule}

__all__ = ["PREPROCESS", "RULES", "LSTMRule", "LearnedRule", "MLPRule", "TinyRule", "log_and_sign"]
