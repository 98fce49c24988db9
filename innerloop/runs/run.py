"""A run directory: the one place where every trainer's ``config.json``, checkpoints and ``metrics.json`` live.

Layout of ``out/``::

    config.json            the fully resolved config (+ "resolved": what was derived from it: sizes, device, ...)
    log.csv                one row per logged step (truncated to the resume point on resume)
    checkpoints/step_N/    model.safetensors + trainer.pt + manifest.json (checksums), the newest ``keep`` kept
    checkpoints/latest     the newest checkpoint's folder name
    metrics.json           the final numbers

Resuming is the default: training again with the same ``out`` continues from the newest intact checkpoint, exactly.
A directory that holds a checkpoint of a *different* config is refused with an error naming every differing field
(nothing is changed; on the command line, settings left out are taken from the run's ``config.json``, so
``--out DIR`` alone resumes it); ``fresh=True`` keeps that old run under a new name and starts over; ``extend=True``
allows the total step count to grow (the steps already taken are kept; a learning-rate schedule over the total then
changes from the resume point on, and ``config.json`` records the extension).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch import nn

from innerloop._io import atomic_write_json, read_json
from innerloop.runs.checkpoint import (
    CorruptCheckpointError,
    checkpoint_steps,
    latest_checkpoint,
    load_state,
    load_weights,
    save_checkpoint,
)

__all__ = ["ConfigMismatchError", "Run", "RunInUseError", "config_diff", "fill_added_fields", "read_config"]


class ConfigMismatchError(ValueError):
    """A run directory holds a checkpoint made with a different config."""


class RunInUseError(ValueError):
    """Another process is training into the run directory (it holds the directory's lock)."""


def _lock_dir(path: Path) -> int | None:
    """An exclusive ``flock`` on the directory ``path`` (its open descriptor, to close to release it); None where the
    platform or file system has no such locks (then runs are not guarded). The OS releases it when the process ends,
    however it ends, so a crashed run never leaves a stale lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunInUseError(f"{path} is in use: another process is training this run now (the same command started "
                            f"twice, or a requeued job whose first copy still runs). Wait for it to end, or stop it "
                            f"(Ctrl-C saves a checkpoint first) and run the command again to resume, or use another "
                            f"--out; nothing was changed.") from None  # fmt: skip
    except OSError:  # a file system without flock (some network mounts): unguarded, as before
        os.close(fd)
        return None
    return fd


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(saved: dict[str, Any], current: dict[str, Any], free: Iterable[str] = ()) -> dict[str, tuple]:
    """Keys (outside ``free``) whose values differ: ``{key: (saved, current)}``; nested keys are dotted
    (``"model.hidden_size"``).

    Examples:
        >>> config_diff({"lr": 1, "model": {"width": 8}}, {"lr": 1, "model": {"width": 16}})
        {'model.width': (8, 16)}
    """
    saved, current = _flat(saved), _flat(current)
    keys = (set(saved) | set(current)) - set(free)
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}


def check_out(out: str | Path) -> None:
    """Refuse an empty run folder name: ``Path("")`` is the current directory, so ``--out "$DIR"`` with ``DIR``
    unset would train into (or resume from) whatever folder the command runs in.

    Raises:
        ValueError: ``out`` is empty.
    """
    if not str(out).strip():
        raise ValueError(f"--out is empty ({str(out)!r}): give the run's folder (an unset shell variable in "
                         f"--out \"$DIR\"?)")  # fmt: skip


def read_config(out: str | Path, command: str, cls: type | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``config.json`` that :meth:`Run.write_config` wrote in run directory ``out``: ``(config, resolved)``.

    Args:
        out (str | Path): the run directory.
        command (str): the command that makes such runs, for the error (e.g. ``"innerloop meta train"``).
        cls (type, Optional): the config dataclass the saved config is read into: a setting it does not have (the
            run of another command, e.g. ``meta eval --out <an lm run>``) is a clear error, not a ``TypeError`` of
            ``cls(**config)``. Default: None (not checked).

    Raises:
        FileNotFoundError: ``out`` holds no ``config.json`` (the message names ``command``).
        ValueError: ``cls`` given and the config has settings ``cls`` does not have.
    """
    path = Path(out) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: give a run directory made by `{command}`")
    body = read_json(path)
    resolved = body.pop("resolved", None) or {}
    if cls is not None:
        unknown = sorted(set(body) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            more = f" (and {len(unknown) - 4} more)" if len(unknown) > 4 else ""
            raise ValueError(
                f"{out} holds no run of `{command}`: its config.json has {', '.join(unknown[:4])}{more}, "
                f"which {cls.__name__} does not have; give a run directory made by `{command}`"
            )
    return body, resolved


class Run:
    """The directory of one training run.

    Args:
        out (str | Path): the run directory.
        config (dict): the run's config as a JSON-able dict; a checkpoint is resumed only under the same config.
        steps_key (str, Optional): the config key holding the total number of steps (for ``extend``).
            Default: ``"steps"``.
        resume_free (Iterable[str], Optional): config keys that may change on resume (they change how a run is run or
            reported, not what it computes: output folder, logging, checkpoint period, ...). Default: ().
        fresh (bool, Optional): start over even if ``out`` holds a run; the old contents are moved to
            ``<out>.previous-<time>`` (nothing is deleted). Default: False.
        extend (bool, Optional): allow ``config[steps_key]`` to be larger than the checkpoint's. Default: False.
        is_main (bool, Optional): this process writes files (rank 0 under torchrun). Default: True.
        keep (int, Optional): checkpoints kept (the newest); 0 keeps every one. Default: 2.
        command (str, Optional): how to name the fix in error messages (e.g. ``"innerloop lm train"``).
            Default: ``"the same command"``.
        upgrade (Callable[[dict], dict], Optional): turns a config saved by an older version into today's form
            before it is compared. Default: None (compared as saved).
    """

    def __init__(
        self, out: str | Path, config: dict[str, Any], *, steps_key: str = "steps", resume_free: Iterable[str] = (),
        fresh: bool = False, extend: bool = False, is_main: bool = True, keep: int = 2,
        command: str = "the same command", upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:  # fmt: skip
        check_out(out)
        self.out, self.config = Path(out), dict(config)
        blocker = next((p for p in (self.out, *self.out.parents) if p.exists()), None)  # nearest existing path
        if blocker is not None and not blocker.is_dir():
            raise NotADirectoryError(f"cannot use {self.out} as the run folder: {blocker} is a file, not a folder; "
                                     f"give --out a folder (new or a run's)")  # fmt: skip
        self.steps_key, self.resume_free = steps_key, frozenset(resume_free)
        self.fresh, self.extend, self.is_main, self.keep, self.command = fresh, extend, is_main, keep, command
        self.upgrade = upgrade
        self.ckpt_dir = self.out / "checkpoints"
        self.extensions: list[dict[str, int]] = []
        self.moved_to: Path | None = None
        self._lock: int | None = None
        self._check_one_writer()

    # ---- one writer at a time
    def acquire(self) -> None:
        """Take the run directory's lock (main process; creates ``out``): a second process training into the same
        ``out`` at the same time raises :class:`RunInUseError` instead of interleaving its checkpoints and log rows
        with this one's. Held until :meth:`release` (the trainers release it when ``fit`` returns or raises), or until
        the process ends, however it ends. Taking it again is a no-op."""
        if self._lock is not None or not self.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_dir(self.out)

    def release(self) -> None:
        """Give the lock back (no-op without it)."""
        if getattr(self, "_lock", None) is not None:  # (None too when __init__ raised before setting it)
            os.close(self._lock)
            self._lock = None

    def __del__(self) -> None:
        self.release()

    def _check_one_writer(self) -> None:
        """Refuse to be one of several processes that would each write ``out`` as its only writer: a trainer that
        does not train data-parallel, launched by ``torchrun`` (every process would train the same run and race on
        its files)."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
            if not (self.is_main and rank > 0):
                return
        else:
            rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
            if world <= 1:
                return
        who = "this trainer" if self.command == "the same command" else f"`{self.command}`"
        raise ValueError(f"{who} trains in one process, but this is process {rank} of {world} (a torchrun "
                         f"launch): every process would train the same run and write {self.out} at once. Launch it "
                         f"without torchrun (`innerloop lm train` is the data-parallel trainer); nothing was "
                         f"written.")  # fmt: skip

    # ---- starting
    def _has_contents(self) -> bool:
        return self.out.is_dir() and any(self.out.iterdir())

    def start_fresh_if_asked(self) -> None:
        """With ``fresh=True``, move an existing non-empty ``out`` aside (rank 0) so the run starts from nothing."""
        if not (self.fresh and self.is_main and self._has_contents()):
            return
        held = self._lock is not None
        self.acquire()  # never move aside a run another process is writing (held through the rename)
        target = self.out.with_name(f"{self.out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        n = 1
        while target.exists():
            n += 1
            target = self.out.with_name(f"{self.out.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        self.out.rename(target)
        self.moved_to = target
        self.release()  # the lock went with the folder moved aside
        if held:  # ... and this run holds its own
            self.acquire()

    def check_config(self, saved: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint of a different run (one line naming the fields and the fixes)."""
        if self.upgrade is not None:
            saved = self.upgrade(saved)
        old, new = saved.get(self.steps_key), self.config.get(self.steps_key)
        # a run started with --extend and stopped before its first checkpoint: its config.json records the extension,
        # so the command that resumes it from --out alone (the steps read from there, no --extend) goes on with it
        extend = self.extend or self._extension_recorded(old, new)
        free = set(self.resume_free) | ({self.steps_key} if extend else set())
        diff = config_diff(saved, self.config, free)
        if diff:
            fields = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            hint = ""
            if set(diff) == {self.steps_key}:
                hint = f" To train it further, add --extend with the larger --{self.steps_key.replace('_', '-')}."
            steps = f"--{self.steps_key.replace('_', '-')}"
            raise ConfigMismatchError(
                f"{self.out} holds a checkpoint of a different run ({fields}).{hint} Use another --out, resume with "
                f"only --out (settings you leave out are taken from the run; --extend with a larger {steps} trains "
                f"further), or --fresh to start over (the old run is kept as {self.out.name}.previous-<time>); "
                f"nothing was changed."
            )
        if extend and old is not None and new is not None and new != old:
            if new < old:
                raise ConfigMismatchError(f"--extend can only add steps: {self.out} was made for {old} "
                                          f"{self.steps_key}, now {new}; nothing was changed.")  # fmt: skip
            self.extensions.append({"from": int(old), "to": int(new), "at_step": int(path.name.split("_")[-1])})

    def _extension_recorded(self, old: Any, new: Any) -> bool:
        """Whether ``config.json`` records an extension of the step count from ``old`` to ``new`` (one asked for with
        ``extend=True`` by the run that wrote it)."""
        if old is None or new is None or new == old:
            return False
        try:
            extensions = read_config(self.out, self.command)[1].get("extensions") or []
        except (OSError, ValueError, AttributeError):  # missing, unreadable, or not a config: nothing recorded
            return False
        return any(isinstance(e, dict) and e.get("from") == old and e.get("to") == new for e in extensions)

    def resume(self, module: nn.Module, map_location: Any = "cpu") -> dict[str, Any] | None:
        """Load the newest intact checkpoint's weights into ``module``; return its state (None: start from scratch).

        A damaged checkpoint is skipped with a warning naming it; a checkpoint of another config raises
        :class:`ConfigMismatchError` before anything is loaded or written. ``extend=True`` on a folder that holds no
        run (no ``config.json``, no checkpoint) raises ``ValueError``: a mistyped ``--out`` would otherwise start a new
        run with default settings.
        """
        if self.extend and not self.fresh and not (self.out / "config.json").is_file() \
                and not checkpoint_steps(self.ckpt_dir):
            raise ValueError(f"--extend trains a run further, but {self.out} holds no run (no config.json, no "
                             f"checkpoint): check --out for a typo, or drop --extend to start a new run; nothing was "
                             f"trained.")  # fmt: skip
        self.acquire()
        self.start_fresh_if_asked()
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # under torchrun, no rank reads ``out`` before rank 0 has moved an old run aside
        skip: list[CorruptCheckpointError] = []
        asked = list(self.extensions)
        while True:
            path = latest_checkpoint(self.ckpt_dir, skip)
            if path is None:
                return None
            try:
                state = load_state(path, map_location)
                if "config" in state:
                    self.check_config(state["config"], path)
                load_weights(path, module, map_location)
            except CorruptCheckpointError as e:
                skip.append(e)
                self.extensions = list(asked)  # an extension is recorded once, at the checkpoint resumed from
                continue
            self.extensions = list(state.get("extensions", [])) + self.extensions
            state["path"] = path
            return state

    # ---- writing
    def write_config(self, resolved: dict[str, Any] | None = None) -> None:
        """``config.json``: the config, what was derived from it, and any extensions of the step count."""
        if not self.is_main:
            return
        body = dict(self.config)
        extra = dict(resolved or {})
        if self.extensions:
            extra["extensions"] = self.extensions
        if extra:
            body["resolved"] = extra
        atomic_write_json(self.out / "config.json", body)

    def save(self, step: int, module: nn.Module, state: dict[str, Any]) -> Path | None:
        """A checkpoint of ``module`` and ``state`` (rank 0 only); the config and extensions are added."""
        if not self.is_main:
            return None
        body = {**state, "config": self.config, "extensions": self.extensions}
        return save_checkpoint(self.ckpt_dir, step, module, body, self.keep)

    def write_metrics(self, metrics: dict[str, Any], name: str = "metrics.json") -> None:
        if self.is_main:
            atomic_write_json(self.out / name, metrics)


def fill_added_fields(old_values: Mapping[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``upgrade`` of a :class:`Run` whose config only grew: a field missing from a saved config reads as its
    value in ``old_values`` (the value that reproduces what runs made before the field existed did); saved fields are
    kept as saved. One definition for every trainer (each keeps its own ``ADDED_FIELDS``).

    Args:
        old_values (Mapping[str, Any]): each added field's name and the value it had, in effect, before it existed.
    Returns:
        Callable[[dict], dict]: ``saved -> {**old_values, **saved}``, a new dict (mutable values are copied, so an
            upgraded config never shares a list with ``old_values`` or another upgraded config).
    """
    frozen = copy.deepcopy(dict(old_values))

    def upgrade(saved: dict[str, Any]) -> dict[str, Any]:
        return {**copy.deepcopy(frozen), **saved}

    return upgrade
