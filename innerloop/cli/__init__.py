"""The ``innerloop`` command line: ``innerloop.cli.main.main`` and one module per subcommand."""

__all__: list[str] = []
