"""A MAML-RL training run in a child process for the kill test: ``python _maml_rl_child.py OUT SLEEP``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _maml_rl_runs import run  # noqa: E402

from innerloop.testing import SlowSteps  # noqa: E402

if __name__ == "__main__":
    out, seconds = sys.argv[1], float(sys.argv[2])
    run(out, callbacks=[SlowSteps(seconds)])  # the config sets one torch thread, as in the parent
