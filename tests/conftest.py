import os
import signal

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its CPU interpreter; Triton reads this when imported
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _user_cache(tmp_path_factory):
    """``$INNERLOOP_CACHE`` (token caches, decoded data sets, compiled kernels) is a temporary folder for the whole
    session, subprocesses included: tests never write to the real ``~/.cache/innerloop``."""
    old = os.environ.get("INNERLOOP_CACHE")
    os.environ["INNERLOOP_CACHE"] = str(tmp_path_factory.mktemp("innerloop-cache"))
    yield
    if old is None:
        os.environ.pop("INNERLOOP_CACHE", None)
    else:
        os.environ["INNERLOOP_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _sigint_as_in_a_terminal():
    """CI may start the tests with SIGINT ignored (nohup, background jobs), which the trainers respect; the Ctrl-C
    tests send a real SIGINT, as a terminal would deliver it."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def _load_script(name: str):
    """``scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def load_script():
    """``load_script("icl_feature_probe")``: a script of ``scripts/`` as a module, for its tests."""
    return _load_script
