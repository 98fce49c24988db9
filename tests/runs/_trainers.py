"""Every trainer on the run scaffold, at test size, behind one interface for the shared run tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STEPS = 8  # every run: 8 steps, a checkpoint every 2, a log row every step


@dataclass
class TrainerCase:
    """``run(out, **kw)`` trains to the end; ``step_key`` is the log's step column; ``loss_cols`` are compared."""

    run_fn: Callable[..., Any]
    step_key: str
    loss_cols: tuple[str, ...]

    def run(self, out: str, callbacks: list | None = None, **kw: Any) -> Any:
        return self.run_fn(str(out), callbacks=list(callbacks or []), **kw)


def _lm(out: str, callbacks: list, fresh: bool = False, extend: bool = False, **cfg: Any) -> Any:
    from innerloop.train import TrainConfig, train_lm

    base = dict(hidden_size=16, num_attention_heads=2, num_hidden_layers=1, context=16, batch_size=2, steps=STEPS,
                warmup_steps=1, eval_every=4, eval_batches=1, log_every=1, checkpoint_every=2, out=out)  # fmt: skip
    return train_lm(TrainConfig.from_flat(**{**base, **cfg}), callbacks=callbacks, fresh=fresh, extend=extend)


def _meta(out: str, callbacks: list, fresh: bool = False, extend: bool = False, **cfg: Any) -> Any:
    from innerloop.meta.trainer import MetaConfig, train

    base = dict(task="sinusoid", shots=3, meta_batch=2, iterations=STEPS, log_every=1, checkpoint_every=2,
                eval_tasks=4, eval_batch=4, test_steps=1, out=out)  # fmt: skip
    return train(MetaConfig(**{**base, **cfg}), progress=False, evaluate=False, fresh=fresh, extend=extend,
                 callbacks=callbacks)  # fmt: skip


def _synth(out: str, callbacks: list, fresh: bool = False, extend: bool = False, **cfg: Any) -> Any:
    from innerloop.synth import SynthConfig, train

    base = dict(task="copy", mixer="gru", hidden_size=8, num_layers=1, steps=STEPS, batch_size=4, train_length=3,
                min_train_length=1, eval_lengths=[3], eval_batch_size=4, log_every=1, checkpoint_every=2, out=out)
    return train(SynthConfig(**{**base, **cfg}), fresh=fresh, extend=extend, callbacks=callbacks)


TRAINERS = {
    "lm": TrainerCase(_lm, "step", ("loss", "val_loss")),
    "meta": TrainerCase(_meta, "iteration", ("loss",)),
    "synth": TrainerCase(_synth, "step", ("loss", "length")),
}
