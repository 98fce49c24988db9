"""Run under torchrun by test_distributed.py: train a tiny LM, then save this rank's weights as rank<r>.pt."""

import json
import sys
from pathlib import Path

import torch

from innerloop.train import Callback, TrainConfig, train_lm
from innerloop.train.distributed import cleanup_distributed, setup_distributed


class Grab(Callback):
    def on_train_start(self, trainer):
        self.model = trainer.model


cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
info = setup_distributed("cpu")
grab = Grab()
train_lm(cfg, callbacks=[grab], dist_info=info)
torch.save(grab.model.state_dict(), Path(sys.argv[2]) / f"rank{info.rank}.pt")
cleanup_distributed()
