"""Every ``innerloop`` import points down the stack: the floors of ``docs/architecture.md``, enforced.

The modules are parsed with ``ast``, never imported, so the check is cheap and sees imports inside functions, under
``if TYPE_CHECKING:``, relative imports (resolved against the module's package) and ``importlib.import_module``
calls with a constant name. The table below is the source of truth; ``docs/architecture.md`` explains it.

To change the design, change ``MAY_IMPORT`` / ``SIBLINGS`` here and the table in ``docs/architecture.md`` together.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "innerloop"

# Units, bottom to top. A module's unit is the first name after ``innerloop.``:
#   bottom  private top-level helpers ``innerloop._*`` (``_config``, ``_io``, ...), ``errors``, ``testing``
#           (assert_close helpers for tests and benchmarks; it imports only torch and ``runs``, so any floor may use
#           it) and ``runs`` (the run scaffold: run directory, checkpoints, the training loop; no model code, so every
#           trainer above can stand on it)
#   ops     pure functions over tensors, one sub-package per op
#   data    a side room: datasets, tokenizers, task samplers; imports only the bottom, used from above ``models``
#   layers  nn.Modules over the ops (the mixers and their registry)
#   models  models built from layers (the causal LM, the authors' checkpoint loader, meta-learning nets)
#   app     the application floor: algorithms, trainers, evaluation, experiments (APP below)
#   cli     thin entry points; ``innerloop/__main__.py`` belongs here
#   facade  the package ``innerloop`` itself (``innerloop/__init__.py``): re-exports lazily from any floor
BOTTOM_NAMES = ("errors", "testing", "runs")  # public names on the bottom floor (besides every ``_*`` module)
APP = ("optim", "eval", "train", "meta", "rl", "synth", "forecast", "icl", "diagnostics")
BELOW_APP = ("bottom", "ops", "layers", "models", "data")

# Which other app packages each app package may import (besides BELOW_APP and itself). Acyclic, checked below.
#   optim: update rules as (init, update) pairs; no algorithm, no trainer (meta builds on optim, not the reverse)
#   eval: metrics, evaluation loops, generation; never the trainers (a trainer calls eval, not the reverse)
#   train: the supervised (LM) trainer on the run scaffold; calls eval, may use optim; never meta or an experiment
SIBLINGS: dict[str, tuple[str, ...]] = {
    "optim": (),
    "eval": (),
    "train": ("eval", "optim"),
    "meta": ("eval", "optim", "train"),
    "rl": ("eval", "meta", "optim", "train"),
    "synth": ("eval", "optim", "train"),
    "forecast": ("eval", "optim", "train"),
    "icl": ("eval", "meta", "optim", "train"),
    "diagnostics": ("eval", "meta", "optim", "rl", "synth", "train"),
}

ALL_UNITS = ("bottom", "ops", "data", "layers", "models", *APP, "cli", "facade")
MAY_IMPORT: dict[str, frozenset[str]] = {
    "bottom": frozenset({"bottom"}),
    "ops": frozenset({"bottom", "ops"}),
    "data": frozenset({"bottom", "data"}),
    "layers": frozenset({"bottom", "ops", "layers"}),
    "models": frozenset({"bottom", "ops", "layers", "models"}),
    **{name: frozenset({*BELOW_APP, name, *SIBLINGS[name]}) for name in APP},
    "cli": frozenset(set(ALL_UNITS)),
    "facade": frozenset(set(ALL_UNITS)),
}

# Imports that break the table today, each with the reason it is tolerated and who removes it:
# {(path relative to the repository root, imported module): reason}. An entry that no longer matches an import fails
# the test, so the list only shrinks.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def unit_of(module: str) -> str | None:
    """The unit (floor or app package) of a dotted module name under ``innerloop``; None if not in the table."""
    parts = module.split(".")
    if parts[0] != PKG:
        return None
    if len(parts) == 1:
        return "facade"
    top = parts[1]
    if top == "__main__":
        return "cli"
    if top.startswith("_") or top in BOTTOM_NAMES:
        return "bottom"
    return top if top in MAY_IMPORT else None


class Violation(NamedTuple):
    path: str  # relative to the scanned root
    line: int
    statement: str
    target: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}` imports {self.target}: {self.rule}"


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted name of ``path`` (a file under ``root/innerloop``) and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _exists(module: str, root: Path) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports_of(path: Path, root: Path) -> list[tuple[int, str, str]]:
    """``(line, statement, imported module)`` for every ``innerloop`` import in the file at ``path``.

    ``from X import name`` counts as importing ``X.name`` when that is a module of the tree, else ``X``.
    """
    module, is_pkg = module_name(path, root)
    package = module if is_pkg else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, ast.unparse(node), a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                up = package.split(".")
                base_parts = up[: len(up) - (node.level - 1)] if node.level > 1 else up
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((node.lineno, ast.unparse(node), sub if _exists(sub, root) else base))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, ast.unparse(node), node.args[0].value))
    unique = dict.fromkeys((line, stmt, target) for line, stmt, target in found if target.split(".")[0] == PKG)
    return list(unique)  # one entry per imported module and line (``from X import a, b`` names X once)


def find_violations(root: Path) -> list[Violation]:
    """Every import under ``root/innerloop`` that the table forbids, in file and line order."""
    out = []
    for path in sorted((root / PKG).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        source = unit_of(module_name(path, root)[0])
        if source is None:
            out.append(Violation(rel, 1, "(the module itself)", module_name(path, root)[0],
                                 "this package has no floor; add it to the table in tests/test_architecture.py and "
                                 "docs/architecture.md"))
            continue
        for line, stmt, target in imports_of(path, root):
            unit = unit_of(target)
            if unit is None:
                rule = "not a package in the table (a typo, or a new package: give it a floor first)"
            elif unit in MAY_IMPORT[source]:
                continue
            else:
                allowed = ", ".join(u for u in ALL_UNITS if u in MAY_IMPORT[source])
                rule = (f"{source} may not import {unit} ({source} may import: {allowed}); move the shared code "
                        f"down a floor, or pass it in from above")
            out.append(Violation(rel, line, stmt, target, rule))
    return out


def test_imports_point_down_the_stack():
    violations = find_violations(ROOT)
    new = [v for v in violations if (v.path, v.target) not in KNOWN_VIOLATIONS]
    assert not new, "imports against docs/architecture.md:\n" + "\n".join(map(str, new))


def test_known_violations_still_exist():
    seen = {(v.path, v.target) for v in find_violations(ROOT)}
    stale = [f"{path} -> {target}" for path, target in KNOWN_VIOLATIONS if (path, target) not in seen]
    assert not stale, "fixed, so remove from KNOWN_VIOLATIONS: " + ", ".join(stale)


def test_every_package_has_a_floor():
    names = {p.stem if p.is_file() else p.name for p in (ROOT / PKG).iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file())}
    missing = sorted(n for n in names if unit_of(f"{PKG}.{n}") is None)
    assert not missing, f"innerloop.{{{', '.join(missing)}}} have no floor in tests/test_architecture.py"


def test_siblings_form_no_cycle():
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle among app packages: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in SIBLINGS[name]:
                assert dep in SIBLINGS, f"SIBLINGS[{name!r}] names {dep!r}, which is not an app package"
                visit(dep, (*path, name))
            done.add(name)

    for name in SIBLINGS:
        visit(name, ())


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_upward_imports_are_caught(tmp_path):
    root = _tree(tmp_path, {
        "innerloop/__init__.py": "from innerloop.models import M\n",  # the facade may import anything
        "innerloop/_io.py": "",
        "innerloop/ops/__init__.py": "def f():\n    from innerloop.layers import L  # inside a function\n",
        "innerloop/layers/__init__.py": "L = 1\n",
        "innerloop/layers/mod.py": "from ..models.lm import M\nfrom . import other\nfrom innerloop._io import x\n",
        "innerloop/layers/other.py": "",
        "innerloop/models/__init__.py": "M = 1\n",
        "innerloop/models/lm.py": "import innerloop.ops\nfrom innerloop import data\n",
        "innerloop/data/__init__.py": "import importlib\nimportlib.import_module('innerloop.train')\n",
        "innerloop/eval/__init__.py": "from innerloop.train.run import fit\n",
        "innerloop/train/__init__.py": "from innerloop.eval import score\nfrom innerloop.optim import sgd\n",
        "innerloop/train/run.py": "",
        "innerloop/optim/__init__.py": "from innerloop.meta import maml\n",
        "innerloop/cli/main.py": "from innerloop.train import fit\nfrom innerloop.nowhere import x\n",
    })
    got = {(v.path, v.line, v.target) for v in find_violations(root)}
    assert got == {
        ("innerloop/ops/__init__.py", 2, "innerloop.layers"),
        ("innerloop/layers/mod.py", 1, "innerloop.models.lm"),
        ("innerloop/models/lm.py", 2, "innerloop.data"),
        ("innerloop/data/__init__.py", 2, "innerloop.train"),
        ("innerloop/eval/__init__.py", 1, "innerloop.train.run"),
        ("innerloop/optim/__init__.py", 1, "innerloop.meta"),
        ("innerloop/cli/main.py", 2, "innerloop.nowhere"),
    }
    message = str(next(v for v in find_violations(root) if v.path == "innerloop/eval/__init__.py"))
    assert "innerloop/eval/__init__.py:1" in message
    assert "from innerloop.train.run import fit" in message
    assert "eval may not import train" in message


def test_a_package_without_a_floor_is_caught(tmp_path):
    root = _tree(tmp_path, {"innerloop/__init__.py": "", "innerloop/widgets/__init__.py": ""})
    (v,) = find_violations(root)
    assert v.path == "innerloop/widgets/__init__.py" and "no floor" in v.rule


@pytest.mark.parametrize("name", ["optim", "rl", "forecast", "icl", "data.text", "data.fewshot", "data.synthetic"])
def test_planned_packages_have_a_place(name):
    """Packages being built now already have a floor, so adding them does not need a table change."""
    assert unit_of(f"{PKG}.{name}") is not None
