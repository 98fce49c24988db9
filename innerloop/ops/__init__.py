"""Pure sequence ops, one sub-package each, every fast path beside its obviously-correct reference (same signature):

- :mod:`innerloop.ops.ttt`: TTT-Linear / TTT-MLP (naive, chunk = dual form, recurrent, fused CPU kernel);
- :mod:`innerloop.ops.selective_scan`: Mamba's selective scan (naive, chunk, fused C / Triton kernels);
- :mod:`innerloop.ops.rnn`: RNN / LSTM / GRU cells and their scan.
"""

__all__: list[str] = []
