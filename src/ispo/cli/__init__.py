"""The ``ispo`` command line: one typer app (:mod:`ispo.cli.main`) and the benchmark commands
(:mod:`ispo.cli.bench`)."""
