"""Run under torchrun by test_fsdp.py: train a tiny LM (config JSON in argv[1]); every rank writes its per-step
losses and how many parameter elements it holds to argv[2]/rank<r>.json (rank 0 also writes the run's checkpoints)."""

import json
import sys
from pathlib import Path

from innerloop.train import Callback, TrainConfig, train_lm
from innerloop.train.distributed import cleanup_distributed, setup_distributed


class Grab(Callback):
    def on_train_start(self, trainer):
        self.trainer = trainer


cfg = TrainConfig.from_dict(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
info = setup_distributed("cpu")
grab = Grab()
train_lm(cfg, callbacks=[grab], dist_info=info)
model = grab.trainer.model
local = sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())
(out / f"rank{info.rank}.json").write_text(json.dumps({"local_numel": local, "losses": grab.trainer.losses}))
cleanup_distributed()
