"""innerloop: learning to learn in PyTorch.

A sequence model is a learning algorithm and its hidden state is what it has learned. The package is layered
(``docs/architecture.md``): ``ops`` (pure functions) -> ``layers`` (nn.Modules, the mixers) -> ``models`` ->
``meta`` / ``optim`` / ``train`` / ``eval`` / ``synth`` / ``rl`` / ``forecast`` / ``icl`` / ``diagnostics`` ->
``cli``, with ``data`` beside them and the run scaffold ``runs`` at the bottom. Import what you use from its package
(``innerloop.layers``, ``innerloop.models.lm``, ``innerloop.meta``, ...); this top level stays light.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_official_ttt"]


def __getattr__(name: str):
    if name == "load_official_ttt":  # lazy, so `import innerloop` stays light
        from innerloop.models.official import load_official_ttt

        return load_official_ttt
    raise AttributeError(f"module 'innerloop' has no attribute {name!r}")
