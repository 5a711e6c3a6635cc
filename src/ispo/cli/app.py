"""The ``ispo`` typer app and its entry point: thin wrappers over the Python API.

Every user mistake ends in one line on stderr (``error: ...``) and exit code 2, with no
traceback unless ``--debug``; outputs are written atomically, never half. The commands live
one module each (:mod:`ispo.cli.embed`, :mod:`ispo.cli.perturb`, ...) and register on ``app``
when :mod:`ispo.cli.main` imports them.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Annotated

import typer

from ispo.errors import IspoError
from ispo.runtime import interrupt

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fast, exact Geneformer embeddings and in-silico perturbation. "
    "Every command also takes --config FILE (YAML of its options; flags on "
    "the command line override it) and saves the config it ran with. --debug and "
    "--quiet go before or after the command.",
)
GLOBAL_FLAGS = ("--debug", "--quiet", "-q")  # the options of _root, accepted anywhere


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
    args = _global_flags_first(sys.argv[1:] if argv is None else list(argv))
    debug = "--debug" in args
    group = typer.main.get_command(app)
    try:
        from ispo.config import apply_config

        args, default_map = apply_config(args, group)
        with interrupt.handlers():  # SIGINT, SIGTERM: ispo.runtime.interrupt.Interrupted
            code = app(args=args, prog_name="ispo", standalone_mode=False, default_map=default_map)
        if isinstance(code, int) and code:  # typer.Exit(code) in a command
            sys.exit(code)
    except interrupt.Interrupted as exc:
        print(exc.message(resumable=_has_option(group, args, "resume")), file=sys.stderr)
        sys.exit(exc.exit_code)
    except IspoError as exc:
        if debug:
            raise
        print(f"error: {in_flags(str(exc), group, args)}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
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


# API parameter names whose flag is not the same name dashed
_API_NAMES = {"embedding_key": "--embedding", "pool_mode": "--pool"}
_IDENTIFIER = re.compile(r"(?<![\w./-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w/-]|\.\w)")


def _invoked(group, args: list[str]):
    """The click command ``args`` invoke, or None."""
    commands = getattr(group, "commands", {})
    name = next((a for a in args if a in commands), None)
    return None if name is None else commands[name]


def _has_option(group, args: list[str], name: str) -> bool:
    command = _invoked(group, args)
    return command is not None and any(p.name == name for p in command.params)


def in_flags(message: str, group, args: list[str]) -> str:
    """An error of the Python API as the command line says it: the API's parameter names
    (``perturb_type``) become the invoked command's flags (``--perturb-type``), so a user is
    told what to type. Words that are not the command's parameters are left alone."""
    command = _invoked(group, args)
    if command is None:
        return message
    flags = {}
    for p in command.params:
        longs = [o for o in getattr(p, "opts", []) if o.startswith("--")]
        if p.param_type_name == "option" and longs and p.name:
            flags[p.name] = next((o for o in longs if "_" not in o), longs[0])
    flags |= {k: v for k, v in _API_NAMES.items() if v[2:].replace("-", "_") in flags}
    return _IDENTIFIER.sub(lambda m: flags.get(m.group(1), m.group(1)), message)


def _global_flags_first(args: list[str]) -> list[str]:
    """``ispo embed ... --debug`` as ``ispo --debug embed ...``: the app-wide flags
    (:data:`GLOBAL_FLAGS`) are moved before the command, wherever they were (up to ``--``)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    return flags + [a for a in args[:end] if a not in GLOBAL_FLAGS] + args[end:]


def _is_usage_error(exc: Exception) -> bool:
    """A click usage error, from Typer's bundled click (typer >= 0.20) or click itself."""
    kinds: list[type] = [getattr(typer, "TyperException", type(None))]
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return isinstance(exc, tuple(kinds)) and hasattr(exc, "show")
