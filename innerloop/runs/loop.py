"""The training loop every trainer runs: steps, logging, evaluation, checkpoints, and every way a run can stop.

Subclasses say what one step is (:meth:`TrainLoop.train_step`: one optimizer update, returning its scalars) and
what to checkpoint besides the weights (``stateful``: the optimizer, a data generator, ...). The loop does the rest
identically for every trainer:

- resume from the run directory's newest intact checkpoint, exactly (weights, optimizer, RNG, step, loss history);
- log rows to ``log.csv`` (averaged columns are means over the last ``log_every`` steps, from the saved history, so a
  resumed run logs the same numbers as an uninterrupted one);
- evaluate every ``eval_every`` steps and at the end; checkpoint every ``checkpoint_every`` steps and at the end;
- a finished run run again reports its saved evaluation, unless a setting the evaluation depends on (``eval_keys``:
  resume-free config keys such as the number of validation batches) differs from the one it was computed with: then
  it is evaluated again and the checkpoint re-saved with it, so the reported numbers always match ``config.json``;
- stop after ``max_seconds`` of training (checkpointed; the budget counts the whole run's training time, so a run it
  stopped trains nothing more until it is resumed with a larger one) or when a callback sets ``should_stop``;
- stop on a NaN/inf loss without saving (the last good checkpoint stays the newest);
- on Ctrl-C (SIGINT) finish the current step, save a checkpoint and raise :class:`RunInterrupted`;
- a tqdm bar on the main process only.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from innerloop.runs.checkpoint import capture_rng, restore_rng
from innerloop.runs.log import CSVLogger
from innerloop.runs.run import ConfigMismatchError, Run, config_diff

__all__ = ["Callback", "GeneratorState", "RunInterrupted", "TrainLoop", "TrainingDivergedError", "check_finite",
           "progress_bar"]


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the update was not applied and nothing was saved."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the current step was finished and checkpointed; running again resumes."""


def check_finite(value: float, what: str, loop: TrainLoop, step: int) -> None:
    """Raise :class:`TrainingDivergedError` (naming the step, the kept checkpoint and ``loop.diverged_hint``)."""
    if math.isfinite(value):
        return
    kept = "no checkpoint had been written yet"
    if loop.run is not None and loop.last_saved is not None:
        kept = f"the last good checkpoint {loop.last_saved} is kept"
    hint = f" {loop.diverged_hint}" if loop.diverged_hint else ""
    raise TrainingDivergedError(f"training diverged at step {step + 1}: {what} is {value}. The update was not applied "
                                f"and {kept}.{hint}")  # fmt: skip


class Callback:
    """Hooks called by :class:`TrainLoop`; override any of them."""

    def on_train_start(self, trainer: Any) -> None: ...

    def on_step_start(self, trainer: Any, step: int) -> None: ...

    def on_step_end(self, trainer: Any, step: int, logs: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: Any, step: int, metrics: dict[str, float]) -> None: ...


class _SigintGuard:
    """While active (main thread only, and unless SIGINT is ignored), the first Ctrl-C sets ``triggered`` instead of
    raising; a second one raises."""

    def __init__(self) -> None:
        self.triggered = False
        self._previous: Any = None

    def __enter__(self) -> _SigintGuard:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:  # a process told to ignore Ctrl-C (nohup, background jobs) keeps that
                self._previous = previous
                signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.triggered:  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt
        self.triggered = True
        print("\ninterrupt: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)",
              file=sys.stderr, flush=True)  # fmt: skip

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class TrainLoop:
    """Train ``module`` for ``steps`` steps in ``run`` (or in memory when ``run`` is None).

    Args:
        module (nn.Module): the weights that are checkpointed.
        run (Run | None): the run directory; None trains without files (no resume, no logs).
        steps (int): total number of steps.
        stateful (dict[str, Any], Optional): objects with ``state_dict()``/``load_state_dict()`` checkpointed with the
            weights (optimizer, generators, ...). Default: {}.
        log_fields (Sequence[str], Optional): ``log.csv`` columns; the first is the step column. Default:
            ``("step", "loss")``.
        average (Sequence[str], Optional): logged scalars averaged over the last ``log_every`` steps (the others are
            the logged step's values). Default: ``("loss",)``.
        log_every, checkpoint_every, eval_every (int, Optional): periods in steps (``eval_every=0``: only at the end;
            ``checkpoint_every=0``: only at the end). Default: 10, 0, 0.
        max_seconds (float, Optional): stop (checkpointed) after this much training time; 0 = no limit. Default: 0.
        callbacks (Sequence[Callback], Optional): Default: ().
        is_main (bool, Optional): this process logs, evaluates and saves. Default: True.
        progress (bool, Optional): tqdm bar on the main process. Default: False.
        desc (str, Optional): the bar's label. Default: "".
        tokens_per_step (int, Optional): > 0 adds ``tokens`` and ``tokens_per_s`` to the log. Default: 0.
        diverged_hint (str, Optional): what to try when training diverges (appended to the error). Default: "".
        verbose (bool, Optional): say on stderr when a run resumes or starts over. Default: False.
        eval_keys (Sequence[str], Optional): the config keys ``evaluate_metrics`` depends on that may change on
            resume (resume-free keys of ``run``; nested ones dotted, ``"model.x"``). A finished run (or one whose time
            budget is spent) run again with other values of them is evaluated again, and its checkpoint re-saved
            with the new evaluation (the training state in it is unchanged); with the same values it reports the
            saved evaluation. The values the saved evaluation was made with are read from the config saved in the
            checkpoint (the final checkpoint is written right after the final evaluation). Default: ().
    """

    def __init__(
        self, module: nn.Module, run: Run | None, steps: int, *, stateful: dict[str, Any] | None = None,
        log_fields: Sequence[str] = ("step", "loss"), average: Sequence[str] = ("loss",), log_every: int = 10,
        checkpoint_every: int = 0, eval_every: int = 0, max_seconds: float = 0.0, callbacks: Sequence[Callback] = (),
        is_main: bool = True, progress: bool = False, desc: str = "", tokens_per_step: int = 0,
        diverged_hint: str = "", verbose: bool = False, eval_keys: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.model, self.run, self.total_steps = module, run, steps
        self.stateful = dict(stateful or {})
        self.log_fields, self.average = list(log_fields), list(average)
        self.log_every, self.checkpoint_every, self.eval_every = log_every, checkpoint_every, eval_every
        self.max_seconds, self.callbacks, self.is_main = max_seconds, list(callbacks), is_main
        self.progress, self.desc, self.tokens_per_step = progress, desc, tokens_per_step
        self.diverged_hint, self.verbose = diverged_hint, verbose
        self.eval_keys = tuple(eval_keys)
        # eval_keys whose values differ from those of the resumed checkpoint's evaluation: {key: (saved, now)}
        self.eval_changed: dict[str, tuple[Any, Any]] = {}
        self.step = 0
        self.history: dict[str, list[float]] = {k: [] for k in self._recorded()}
        self.train_seconds = 0.0
        self.last_eval: dict[str, float] = {}
        self.last_saved: Path | None = None
        self.resumed_from: Path | None = None
        self.stopped_early = False
        self.should_stop = False  # a callback may set this in on_step_end: checkpoint and stop after this step

    def _recorded(self) -> list[str]:
        """Scalars kept per step in the checkpointed history: the averaged ones and the loss."""
        return list(dict.fromkeys([*self.average, "loss"]))

    # ---- what subclasses provide
    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer update for global step ``step`` (0-based); returns its scalars (at least ``"loss"``).

        Call :func:`check_finite` before applying an update so that a NaN never reaches the weights.
        """
        raise NotImplementedError

    def evaluate_metrics(self) -> dict[str, float]:
        """Validation metrics on the main process (logged as ``val_<name>``); none by default."""
        return {}

    def interrupt_requested(self, local: bool) -> bool:
        """Whether to stop for Ctrl-C; data-parallel subclasses agree across processes here."""
        return local

    def resolved_config(self) -> dict[str, Any]:
        """What ``config.json`` records under ``"resolved"`` besides the config (sizes, device, ...)."""
        return {}

    @property
    def losses(self) -> list[float]:
        """Per-step training loss, kept across resumes."""
        return self.history.setdefault("loss", [])

    # ---- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "stateful": {k: v.state_dict() for k, v in self.stateful.items()}, "rng": capture_rng(),
            "history": {k: list(v) for k, v in self.history.items()}, "train_seconds": self.train_seconds,
            "last_eval": dict(self.last_eval),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" not in state:  # e.g. `innerloop lm import`: weights only, for eval / generate
            where = state.get("path", "the checkpoint")
            raise ConfigMismatchError(
                f"{where} holds weights only, no training state (optimizer, RNG, step history): it was not written "
                f"by a trainer (e.g. `innerloop lm import`) and cannot be resumed. Use another --out, or --fresh to "
                f"start over (the old run is kept); nothing was changed."
            )
        stateful = state.get("stateful")
        if stateful is None and "optimizer" in state:  # checkpoints written before the run scaffold
            stateful = {"optimizer": state["optimizer"]}
        for k, v in (stateful or {}).items():
            if k in self.stateful:
                try:
                    self.stateful[k].load_state_dict(v)
                except (ValueError, KeyError, RuntimeError) as e:
                    where = state.get("path", "the checkpoint")
                    raise ConfigMismatchError(
                        f"the {k} state saved in {where} does not fit this run ({e}): it was written by another "
                        f"version of innerloop (e.g. other weight-decay groups) or another model. Resume it with that "
                        f"version, or use --fresh to start over (the old run is kept); nothing was changed."
                    ) from None
        restore_rng(state["rng"])
        self.step = int(state["step"])
        history = state.get("history") or {"loss": list(state.get("losses", []))}
        self.history = {k: list(history.get(k, [])) for k in set(self._recorded()) | set(history)}
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.last_eval = dict(state.get("last_eval", {}))

    def save(self) -> Path | None:
        if self.run is None or not self.is_main:
            return None
        self.last_saved = self.run.save(self.step, self.model, self.state_dict())
        return self.last_saved

    def resume(self, map_location: Any = "cpu") -> bool:
        """Load the run's newest intact checkpoint if any (see :meth:`Run.resume`)."""
        if self.run is None:
            return False
        state = self.run.resume(self.model, map_location)
        if self.verbose and self.is_main and self.run.moved_to is not None:
            print(f"--fresh: the previous contents of {self.run.out} are kept in {self.run.moved_to}",
                  file=sys.stderr)  # fmt: skip
        if state is None:
            return False
        self.load_state_dict(state)
        self.eval_changed = self._eval_settings_changed(state.get("config"))
        self.resumed_from = self.last_saved = state["path"]
        if self.verbose and self.is_main:
            print(f"resumed from step {self.step} ({state['path']})", file=sys.stderr, flush=True)
        return True

    def _eval_settings_changed(self, saved: Any) -> dict[str, tuple[Any, Any]]:
        """The ``eval_keys`` whose values in ``saved`` (a checkpoint's config) differ from the run's now.

        A checkpoint without a config (written before configs were saved in it) counts as matching.
        """
        if self.run is None or not self.eval_keys or not isinstance(saved, dict):
            return {}
        if self.run.upgrade is not None:
            saved = self.run.upgrade(saved)
        diff = config_diff(saved, self.run.config)
        return {k: v for k, v in diff.items() if k in self.eval_keys}

    def _evaluate_again(self) -> None:
        """Evaluate a run that trains no further under the changed ``eval_keys`` and re-save its checkpoint with the
        new evaluation (and the config that records its settings); the generator states saved are the checkpoint's."""
        if self.verbose and self.is_main:
            changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in self.eval_changed.items())
            print(f"evaluating step {self.step} again: the saved evaluation was made with other settings ({changed})",
                  file=sys.stderr, flush=True)  # fmt: skip
        rng = capture_rng()
        self.evaluate()
        restore_rng(rng)
        self.save()
        self.eval_changed = {}

    def evaluate(self) -> dict[str, float]:
        if not self.is_main:
            return {}
        metrics = self.evaluate_now()
        for cb in self.callbacks:
            cb.on_eval(self, self.step, metrics)
        return metrics

    def evaluate_now(self) -> dict[str, float]:
        """``evaluate_metrics`` in eval mode without gradients, kept as ``last_eval``; on this rank, no callbacks."""
        was = self.model.training
        self.model.eval()
        with torch.no_grad():
            metrics = {k: float(v) for k, v in self.evaluate_metrics().items()}
        self.model.train(was)
        if metrics:
            self.last_eval = metrics
        return metrics

    # ---- the loop
    def _row(self, logs: dict[str, Any]) -> dict[str, Any]:
        row = {self.log_fields[0]: self.step, **logs, "train_seconds": self.train_seconds}
        for k in self.average:
            window = self.history[k][-self.log_every:]
            if window:
                row[k] = sum(window) / len(window)
        if self.tokens_per_step:
            tokens = self.step * self.tokens_per_step
            row.update(tokens=tokens, tokens_per_s=tokens / max(self.train_seconds, 1e-9))
        return row

    def fit(self, map_location: Any = "cpu") -> dict[str, Any]:
        """Train from the newest checkpoint (or from scratch) to ``steps``; returns :meth:`summary`.

        The run directory is locked while this runs (:meth:`Run.acquire`): another process training the same ``out``
        meanwhile gets :class:`~innerloop.runs.RunInUseError`.
        """
        try:
            return self._fit(map_location)
        finally:
            if self.run is not None:
                self.run.release()  # another process may train this run from now on

    def _fit(self, map_location: Any) -> dict[str, Any]:
        resumed = self.resume(map_location)
        start = self.step
        logger = None
        if self.run is not None and self.is_main:
            self.run.out.mkdir(parents=True, exist_ok=True)
            self.run.write_config(self.resolved_config())
            logger = CSVLogger(self.run.out / "log.csv", self.log_fields, self.step if resumed else None,
                               self._tensorboard_dir())  # fmt: skip
        bar = self._bar()
        for cb in self.callbacks:
            cb.on_train_start(self)
        self.model.train()
        if self.max_seconds > 0 and self.train_seconds >= self.max_seconds and self.step < self.total_steps:
            # the budget counts the whole run's training time: a run it stopped goes on only with a larger one
            self.stopped_early = True
            if self.verbose and self.is_main:
                print(f"the time budget is spent: {self.train_seconds:.1f} s of training (max_seconds "
                      f"{self.max_seconds:g}) took the run to step {self.step} of {self.total_steps}; nothing was "
                      f"trained. Give a larger --max-seconds (or 0, no limit) to go on", file=sys.stderr)  # fmt: skip
        try:
            with _SigintGuard() as guard:
                while self.step < self.total_steps and not self.stopped_early:
                    step = self.step
                    for cb in self.callbacks:
                        cb.on_step_start(self, step)
                    t0 = time.perf_counter()
                    logs = self.train_step(step)
                    self.train_seconds += time.perf_counter() - t0
                    self.step = step + 1
                    for k in self._recorded():
                        self.history[k].append(float(logs[k]))
                    done = self.step == self.total_steps
                    for cb in self.callbacks:
                        cb.on_step_end(self, step, logs)
                    interrupted = self.interrupt_requested(guard.triggered) and not done
                    out_of_time = self.max_seconds > 0 and self.train_seconds >= self.max_seconds
                    stop = (out_of_time or self.should_stop or interrupted) and not done
                    # An interrupted run logs and evaluates only what the uninterrupted run would at this step,
                    # so the resumed log reads exactly as one run; a time-budget stop also reports where it stopped.
                    scheduled = bool(self.eval_every and self.step % self.eval_every == 0)
                    if scheduled or done or (stop and not interrupted):
                        logs = {**logs, **{f"val_{k}": v for k, v in self.evaluate().items()}}
                    has_val = any(k.startswith("val_") for k in logs)
                    report = self.step % self.log_every == 0 or done or has_val or (stop and not interrupted)
                    if logger is not None and report:
                        logger.log(self._row(logs))
                    if (self.checkpoint_every and self.step % self.checkpoint_every == 0) or done or stop:
                        if logger is not None:
                            logger.sync()  # the rows of the steps this checkpoint holds are on disk before it
                        self.save()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{float(logs['loss']):.4f}")
                    if interrupted:
                        where = f"; checkpoint {self.last_saved}" if self.last_saved else ""
                        raise RunInterrupted(f"interrupted after step {self.step}{where}; run the same command "
                                             f"again to resume")  # fmt: skip
                    if stop:
                        self.stopped_early = True
                        break
            if resumed and self.step >= self.total_steps and not self.last_eval:
                self.evaluate()
            elif resumed and self.step == start and self.last_eval and self.eval_changed:
                # nothing trained (finished, or the time budget spent): the saved evaluation is of other settings
                self._evaluate_again()
        finally:
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        out = {"steps": self.step, "train_seconds": self.train_seconds, "stopped_early": self.stopped_early,
               "final_train_loss": self.losses[-1] if self.losses else float("nan")}  # fmt: skip
        if self.tokens_per_step:
            tokens = self.step * self.tokens_per_step
            out.update(tokens=tokens, tokens_per_s=tokens / self.train_seconds if self.train_seconds else 0.0)
        return {**out, **{f"val_{k}": v for k, v in self.last_eval.items()}}

    def _tensorboard_dir(self) -> Path | None:
        return None

    def _bar(self) -> Any:
        if not (self.progress and self.is_main):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # pragma: no cover - a base dependency
            return None
        return tqdm(total=self.total_steps, initial=self.step, desc=self.desc, mininterval=1, leave=False)


class GeneratorState:
    """A ``torch.Generator`` as a checkpointable object (``state_dict``/``load_state_dict``) for ``stateful``."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["state"].cpu())  # a state loaded onto the GPU (map_location) is not taken


def progress_bar(items: Any, enabled: bool, desc: str, total: int | None = None) -> Any:
    """``tqdm(items)`` when ``enabled`` (and tqdm imports), else ``items``: progress for long phases."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - a base dependency
        return items
    return tqdm(items, desc=desc, total=total, mininterval=1, leave=False)
