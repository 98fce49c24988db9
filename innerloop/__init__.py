"""innerloop: learning to learn in PyTorch.

A sequence model is a learning algorithm and its hidden state is what it has learned. The package is layered
``ops`` (pure functions) -> ``layers`` (nn.Modules) -> ``models`` -> ``meta`` / ``train`` -> ``cli``.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_official_ttt":  # lazy, so `import innerloop` stays light
        from innerloop.models.official import load_official_ttt

        return load_official_ttt
    raise AttributeError(f"module 'innerloop' has no attribute {name!r}")
