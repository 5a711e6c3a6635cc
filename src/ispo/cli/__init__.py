"""The ``ispo`` command line: the typer app and entry point (:mod:`ispo.cli.app`), the shared
option types (:mod:`ispo.cli.options`), one module per command, the benchmark commands
(:mod:`ispo.cli.bench`); importing :mod:`ispo.cli.main` registers them all."""
