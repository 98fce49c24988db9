"""Every ``>>>`` example in innerloop's docstrings runs and prints what it says (docstrings are documentation that
must stay true)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# modules of an optional dependency: skipped without it
OPTIONAL = {"innerloop.models.hf": "transformers"}
MODULES = sorted(
    ".".join(p.with_suffix("").relative_to(ROOT).parts).removesuffix(".__init__")
    for p in (ROOT / "innerloop").rglob("*.py")
    if ">>>" in p.read_text()
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    for prefix, dep in OPTIONAL.items():
        if name.startswith(prefix):
            pytest.importorskip(dep)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} docstring examples failed (above)"


def test_there_are_examples():
    assert len(MODULES) >= 40
