"""innerloop: learning to learn in PyTorch.

A sequence model is a learning algorithm and its hidden state is what it has learned. The package is layered
``ops`` (pure functions) -> ``layers`` (nn.Modules) -> ``models`` -> ``meta`` / ``train`` -> ``cli``.
"""

__version__ = "0.1.0"
