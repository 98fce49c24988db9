"""An RL² training run in a child process for the kill test: ``python _rl2_child.py OUT SLEEP THREADS [SEPARATE]``.

Each step sleeps ``SLEEP`` seconds (a callback, numerically inert) so the parent can kill the process mid-run; the
child uses the parent's torch thread count, so its float sums are ordered as the parent's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _rl2_runs import run  # noqa: E402

from innerloop.testing import SlowSteps  # noqa: E402

if __name__ == "__main__":
    out, seconds, threads = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    separate = len(sys.argv) > 4 and sys.argv[4] == "1"
    import torch

    torch.set_num_threads(threads)
    run(out, callbacks=[SlowSteps(seconds)], separate_critic=separate)
