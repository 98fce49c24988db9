"""A trained ``innerloop lm train`` run <-> a transformers model directory (``innerloop lm export`` / ``import``).

Needs the ``hf`` extra (transformers). The exported directory keeps the run's config in ``config.json``
(``innerloop_run``) and, for a BPE run, its ``tokenizer.json``, so importing it gives back a run directory that
``innerloop lm eval`` / ``generate`` read like the original (same weights, same tokenizer, same config).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from innerloop._io import atomic_write_json
from innerloop.data.text.tokenizer import TOKENIZER_FILE
from innerloop.runs.checkpoint import save_checkpoint

from .config import TrainConfig
from .lm import load_run

__all__ = ["export_run", "import_run", "quiet_transformers"]


def quiet_transformers() -> None:
    """No transformers progress bars or load reports (the commands print one line each)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def export_run(run: str | Path, out: str | Path) -> Path:
    """Write the newest checkpoint of run directory ``run`` as a transformers model directory ``out``.

    Returns:
        Path: ``out``, holding ``config.json`` (model_type ``innerloop``), ``model.safetensors``,
        ``generation_config.json`` and, for a BPE run, ``tokenizer.json``.
    """
    from innerloop.models.hf import export_hf  # the hf extra

    model, cfg = load_run(run, "cpu")
    tokenizer = Path(run) / TOKENIZER_FILE if cfg.tokenizer == "bpe" else None
    return export_hf(model, out, tokenizer_file=tokenizer, innerloop_run=cfg.to_dict())


def import_run(hf_dir: str | Path, out: str | Path) -> Path:
    """Make run directory ``out`` (``config.json`` + one checkpoint) from the transformers directory ``hf_dir``.

    The run's config is the one saved at export (``innerloop_run``); without it (a model exported from Python, e.g.
    one loaded with ``load_official_ttt``), the tokenizer is ``bpe`` when ``hf_dir`` has a ``tokenizer.json``,
    else ``bytes`` (vocabulary 256). The checkpoint holds the weights only (no optimizer state): the run is for
    ``innerloop lm eval`` / ``generate``, and cannot be trained further with ``innerloop lm train --extend``.

    Raises:
        FileExistsError: ``out`` exists and is not empty.
        ValueError: no tokenizer fits the model (vocabulary not 256 and no ``tokenizer.json``).
    """
    from innerloop.models.hf import load_hf_as_causal_lm  # the hf extra

    hf_dir, out = Path(hf_dir), Path(out)
    if not (hf_dir / "config.json").is_file():  # else transformers reads the path as a Hub repo id
        raise FileNotFoundError(f"{hf_dir / 'config.json'} not found: give --from-hf the folder written by "
                                f"`innerloop lm export --run RUN --to-hf DIR`")  # fmt: skip
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: give a new --out folder for the imported run")
    model, hf_config = load_hf_as_causal_lm(hf_dir)
    has_tokenizer = (hf_dir / TOKENIZER_FILE).is_file()
    if hf_config.innerloop_run:
        cfg = TrainConfig.from_dict({**hf_config.innerloop_run, "out": str(out)})
    elif has_tokenizer or model.config.vocab_size == 256:
        cfg = TrainConfig(model=model.config, tokenizer="bpe" if has_tokenizer else "bytes", out=str(out))
    else:
        raise ValueError(f"{hf_dir} has no tokenizer.json and a vocabulary of {model.config.vocab_size}, not 256 "
                         "(bytes): an innerloop run needs its bytes or BPE tokenizer; use the model from Python "
                         "(innerloop.models.hf.load_hf_as_causal_lm) instead")  # fmt: skip
    if cfg.tokenizer == "bpe" and not has_tokenizer:
        raise ValueError(f"{hf_dir} comes from a BPE run but has no tokenizer.json: copy the run's tokenizer.json "
                         "there and import again")  # fmt: skip
    if cfg.model_for(model.config.vocab_size) != model.config:
        raise ValueError(f"the saved run config does not describe the saved model ({model.config}); export it again")
    out.mkdir(parents=True, exist_ok=True)
    if cfg.tokenizer == "bpe":
        shutil.copyfile(hf_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    atomic_write_json(out / "config.json", {**cfg.to_dict(), "resolved": {"imported_from": str(hf_dir)}})
    save_checkpoint(out / "checkpoints", cfg.steps, model, {"imported_from": str(hf_dir)})
    return out
