"""The public API: every package declares ``__all__``, every name in it exists and is public, and every name the
README imports from innerloop is in its package's ``__all__``."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(
    ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "innerloop").rglob("__init__.py")
)


# packages that need an optional dependency (skipped without it)
OPTIONAL = {"innerloop.models.hf": "transformers"}


@pytest.mark.parametrize("name", PACKAGES)
def test_every_package_declares_its_public_names(name):
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for public in module.__all__:
        assert not public.startswith("_") or public == "__version__", f"{name}.__all__ lists private {public!r}"
        assert hasattr(module, public), f"{name}.__all__ lists {public!r}, which {name} does not have"


def test_readme_imports_are_public():
    text = (ROOT / "README.md").read_text()
    found = re.findall(r"^\s*from (innerloop[\w.]*) import ([\w, ()]+)$", text, re.M)
    assert found, "the README imports nothing from innerloop?"
    for module, names in found:
        if module in OPTIONAL and importlib.util.find_spec(OPTIONAL[module]) is None:
            continue
        public = set(importlib.import_module(module).__all__)
        for n in (x.strip(" ()") for x in names.split(",")):
            if n:
                assert n in public, f"README imports {n} from {module}, which is not in its __all__"
