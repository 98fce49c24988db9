"""Synthetic-task harness: a small model over any mixer, trained and evaluated on ``innerloop.data.synthetic`` tasks.

``from innerloop.synth import SynthConfig, train`` — or ``innerloop synth train --task copy --mixer lstm``.
"""

from .harness import SynthConfig, evaluate, train
from .model import SynthModel, match_hidden_size

__all__ = ["SynthConfig", "SynthModel", "evaluate", "match_hidden_size", "train"]
