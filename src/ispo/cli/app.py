"""The ``ispo`` typer app and its entry point: thin wrappers over the Python API.

Every user mistake ends in one line on stderr (``error: ...``) and exit code 2, with no
traceback unless ``--debug``; outputs are written atomically, never half. The commands live
one module each (:mod:`ispo.cli.embed`, :mod:`ispo.cli.perturb`, ...) and register on ``app``
when :mod:`ispo.cli.main` imports them.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer

from ispo.errors import IspoError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fast, exact Geneformer embeddings and in-silico perturbation. "
    "Every command also takes --config FILE (YAML of its options; flags on "
    "the command line override it) and saves the config it ran with.",
)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="warnings only")] = False,
) -> None:
    """Logging for every command: INFO to stderr, or warnings only with --quiet; then
    ``ISPO_FAULT`` is checked (refused if malformed, announced if set) before any work."""
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from ispo import faults

    faults.announce()


def main(argv: list[str] | None = None) -> None:
    """Entry point: one clear line and exit 2 for user errors; tracebacks only with --debug.

    ``--config FILE`` (any command) is taken out of the command line here and its YAML becomes
    the command's defaults, so flags given on the command line override it (ispo.config).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        from ispo.config import apply_config

        args, default_map = apply_config(args, typer.main.get_command(app))
        app(args=args, prog_name="ispo", standalone_mode=False, default_map=default_map)
    except IspoError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:  # a bug, not a user error: say so in one line
        if debug:
            raise
        if _is_usage_error(exc):  # bad option, missing argument...: click's own message
            exc.show()
            sys.exit(exc.exit_code)
        print(
            f"error: internal {type(exc).__name__}: {exc} (rerun with --debug for the "
            "traceback and report it)",
            file=sys.stderr,
        )
        sys.exit(1)


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error, from Typer's bundled click (typer >= 0.20) or click itself."""
    kinds: list[type] = [getattr(typer, "TyperException", type(None))]
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds)) and hasattr(exc, "show")
