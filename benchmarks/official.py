"""Load the authors' ``ttt.py`` (test-time-training/ttt-lm-pytorch) from a file path for side-by-side runs.

Not a dependency of innerloop and never vendored: the file is read from wherever you keep it and needs
``pip install transformers``. Used by the benchmarks (and optional parity checks) only.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DEFAULT_PATH = "/tmp/ttt_official.py"


def load_official(path: str | Path = DEFAULT_PATH) -> ModuleType:
    """Import the authors' ``ttt.py`` from ``path`` as module ``ttt_official``.

    Args:
        path (str | Path, Optional): location of ``ttt.py``. Default: ``/tmp/ttt_official.py``.
    Returns:
        ModuleType: the module (``TTTConfig``, ``TTTLinear``, ``TTTMLP``, ...).
    Raises:
        FileNotFoundError: no file at ``path``.
        ImportError: ``transformers`` is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official ttt.py not found at {path} (pass --official PATH)")
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("the official ttt.py needs `pip install transformers`") from e
    spec = importlib.util.spec_from_file_location("ttt_official", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["ttt_official"] = module
    spec.loader.exec_module(module)
    return module
