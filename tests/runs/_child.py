"""A training run in a child process for the kill tests: ``python _child.py TRAINER OUT SLEEP THREADS``.

Each step sleeps ``SLEEP`` seconds (a callback, numerically inert) so the parent can kill the process mid-run; the
child uses the parent's torch thread count, so its float sums are ordered as the parent's.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _trainers import TRAINERS  # noqa: E402

from innerloop.testing import SlowSteps  # noqa: E402

if __name__ == "__main__":
    name, out = sys.argv[1], sys.argv[2]
    seconds, threads = float(sys.argv[3]), int(sys.argv[4])
    import torch

    torch.set_num_threads(threads)
    TRAINERS[name].run(out, callbacks=[SlowSteps(seconds)])
