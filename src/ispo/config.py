"""Run configuration files: YAML in, command-line flags on top, the used config saved with results.

Every ``ispo`` command takes ``--config FILE``. The file is plain data, keyed by option names
(``batch-tokens`` or ``batch_tokens``, with or without the leading dashes); arguments can be given
too (``input: kang.h5ad``)::

    # run.yaml
    model: gf-6L-10M-i2048
    random-init: true
    precision: bf16
    embed:            # keys only for `ispo embed`, over the shared ones above
      batch-tokens: 32768

Flat keys apply to the invoked command; a section named after a command applies only to it (and
overrides the flat keys); sections of other commands, and flat keys that only other commands
know, are skipped, so one file can drive a whole pipeline. Any other unknown key is an error, so
a typo never passes silently. Flags on
the command line always win: the file only fills the command's defaults
(:func:`apply_config` hands it to the command as click's ``default_map``).

The run settings of a file (precision, batch tokens, attention, compile, int8, layer, pool) are
also read for the API by :func:`load_settings`, into the :class:`~ispo.settings.RunSettings` the
commands build from the same keys.

Each command saves the settings it actually ran with beside its result
(:func:`save_run_config`): ``DIR/config.yaml`` for a result folder, ``OUT.config.yaml`` beside a
result file. That file is itself a valid ``--config`` for the same command, so a run can be
repeated exactly.
"""

from __future__ import annotations

import datetime as _dt
import enum
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ispo.errors import IspoError
from ispo.settings import RunSettings

log = logging.getLogger(__name__)

#: Name of the saved config inside a result folder.
CONFIG_NAME = "config.yaml"


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML run configuration: a mapping of option names (and command sections).

    Raises
    ------
    IspoError
        If the file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise IspoError(f"config file {path} does not exist: pass the path of a YAML file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise IspoError(f"config file {path} is not valid YAML{at}: fix its syntax") from exc
    except UnicodeDecodeError as exc:
        raise IspoError(f"config file {path} is not a text file: pass a YAML file") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IspoError(
            f"config file {path} must be a mapping of option: value, not a {type(data).__name__}"
        )
    return data


def _key(name: Any) -> str:
    """``--batch-tokens``, ``batch-tokens`` and ``batch_tokens`` all mean ``batch_tokens``."""
    return str(name).lstrip("-").replace("-", "_")


def _param_names(command) -> dict[str, str]:
    """Every accepted spelling (normalised) -> the click parameter name of ``command``."""
    names: dict[str, str] = {}
    for param in command.params:
        if param.name is None or getattr(param, "expose_value", True) is False:
            continue
        names[_key(param.name)] = param.name
        for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            if opt.startswith("--") and not opt.startswith("--no-"):
                names.setdefault(_key(opt), param.name)
    names.pop("help", None)
    return names


def command_defaults(
    config: Mapping[str, Any], commands: Mapping[str, Any], name: str, *, source: str = "config"
) -> dict:
    """The ``default_map`` of command ``name`` from a loaded configuration.

    Flat keys are taken first, then the section named ``name`` (if any) on top; sections named
    after other commands are skipped. A flat key that only another command knows (``model`` in a
    file that also drives ``ispo evaluate``) is skipped too, so one file can drive a pipeline.

    Parameters
    ----------
    config
        The loaded file (:func:`load_config`).
    commands
        Every command of the application, name -> click command.
    name
        The invoked command.
    source
        Where the config came from, for error messages.

    Raises
    ------
    IspoError
        On a key in the command's section that it does not know, or a flat key that no
        command knows.
    """
    known = _param_names(commands[name])
    elsewhere = {k for n, c in commands.items() if n != name for k in _param_names(c)}
    sections = {_key(n) for n in commands}
    flat = {k: v for k, v in config.items() if not (_key(k) in sections and isinstance(v, dict))}
    section = next((v for k, v in config.items() if _key(k) == _key(name)), None)
    if section is not None and not isinstance(section, dict):
        raise IspoError(f"{source}: section {name!r} must be a mapping of option: value")
    if section is None:
        _warn_unused_sections(config, known, name, source, flat)
    out: dict[str, Any] = {}
    entries = [(k, v, False) for k, v in flat.items()]
    entries += [(k, v, True) for k, v in (section or {}).items()]
    for key, value, in_section in entries:
        param = known.get(_key(key))
        if param is None:
            if _key(key) == "config":
                raise IspoError(f"{source}: 'config' cannot be set inside a config file")
            if not in_section and _key(key) in elsewhere:
                continue
            valid = ", ".join(sorted(k.replace("_", "-") for k in set(known.values())))
            raise IspoError(f"{source}: unknown key {key!r} for `ispo {name}`; valid keys: {valid}")
        value = _plain(value)
        if _is_multiple(commands[name], param) and not isinstance(value, (list, type(None))):
            value = [value]  # `batch-tokens: 4096` for a repeatable option
        out[param] = value
    return out


def _warn_unused_sections(
    config: Mapping[str, Any], known: Mapping[str, str], name: str, source: str, flat: Mapping
) -> None:
    """Say so when another command's section sets options this command also has: a
    ``best.yaml`` tuned for ``embed`` only gives ``perturb`` nothing, which should not pass
    for "the tuned settings were used"."""
    unused = sorted(
        {
            str(k)
            for sec_name, sec in config.items()
            if isinstance(sec, dict) and sec_name not in flat
            for k in sec
            if _key(k) in known and _key(k) not in {_key(f) for f in flat}
        }
    )
    if unused:
        log.warning(
            "%s: %s set only in other commands' sections; `ispo %s` does not use them "
            "(add a `%s:` section to apply them here)",
            source,
            ", ".join(unused),
            name,
            name,
        )


def load_settings(path: str | Path, command: str = "embed") -> RunSettings:
    """The :class:`~ispo.settings.RunSettings` of a config file for ``command``, for the API
    (``ispo.load_model(..., settings=load_settings("runs/tune/best.yaml"))``).

    Flat keys first, the command's section on top (as on the command line); keys that are not
    run settings (``model``, ``method``...) are left to their commands.
    """
    config = load_config(path)
    section = next((v for k, v in config.items() if _key(k) == _key(command)), None) or {}
    if not isinstance(section, dict):
        raise IspoError(f"{path}: section {command!r} must be a mapping of option: value")
    flat = {_key(k): v for k, v in config.items() if not isinstance(v, dict)}
    return RunSettings.from_dict({**flat, **{_key(k): v for k, v in section.items()}})


def _is_multiple(command, name: str) -> bool:
    return any(
        p.name == name and (getattr(p, "multiple", False) or getattr(p, "nargs", 1) == -1)
        for p in command.params
    )


def apply_config(args: Sequence[str], group) -> tuple[list[str], dict | None]:
    """Take ``--config FILE`` out of a command line and turn the file into a ``default_map``.

    Parameters
    ----------
    args
        The command line without the program name (``sys.argv[1:]``).
    group
        The click group of the application (``typer.main.get_command(app)``).

    Returns
    -------
    (args, default_map)
        The command line without ``--config FILE``, and ``{command: {param: value}}`` to pass
        to the group (None when no config was given).
    """
    args = list(args)
    path: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest.extend(args[i:])
            break
        if arg == "--config":
            if i + 1 >= len(args):
                raise IspoError("--config needs a file: --config run.yaml")
            if path is not None:
                raise IspoError("--config was given twice: merge the files into one")
            path, i = args[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            if path is not None:
                raise IspoError("--config was given twice: merge the files into one")
            path, i = arg.split("=", 1)[1], i + 1
            continue
        rest.append(arg)
        i += 1
    if path is None:
        return rest, None
    commands = dict(group.commands)
    name = next((a for a in rest if a in commands), None)
    if name is None:
        raise IspoError("--config needs a command to apply to: ispo COMMAND --config FILE")
    config = load_config(path)
    defaults = command_defaults(config, commands, name, source=str(path))
    return rest, {name: defaults}


def run_config_path(out: str | Path) -> Path:
    """Where the config of a result goes: ``DIR/config.yaml`` or ``OUT.config.yaml``.

    A path is taken as a folder when it is an existing directory or has no suffix.
    """
    out = Path(out)
    if out.is_dir() or (not out.exists() and out.suffix == ""):
        return out / CONFIG_NAME
    return out.with_name(out.name + ".config.yaml")


def save_run_config(
    out: str | Path,
    params: Mapping[str, Any] | None = None,
    *,
    command: str | None = None,
    path: str | Path | None = None,
) -> Path:
    """Save the settings a command ran with beside its result, as a reusable ``--config``.

    Parameters
    ----------
    out
        The result: a folder (config goes to ``out/config.yaml``) or a file
        (``out.config.yaml`` beside it).
    params
        The settings, keyed by parameter name. Default: the parameters of the running click
        command (everything on its command line, its config file and its defaults).
    command
        Command name written in the header comment (default: the running command's).
    path
        Write exactly here instead of the place derived from ``out`` (for writing into a
        temporary folder that is renamed to ``out`` afterwards).

    Returns
    -------
    Path
        The file written.
    """
    ctx = _current_context()
    if params is None:
        if ctx is None:
            raise ValueError("save_run_config needs params outside a running ispo command")
        params = ctx.params
    if command is None and ctx is not None:
        command = ctx.info_name
    target = Path(path) if path is not None else run_config_path(out)
    body = {
        _key(k).replace("_", "-"): _plain(v)
        for k, v in params.items()
        if _key(k) not in ("config", "ctx")
    }
    from ispo.provenance import versions

    header = (
        f"# ispo {command or ''} run configuration, written "
        f"{_dt.datetime.now().astimezone().isoformat(timespec='seconds')} by ispo "
        f"{versions()['ispo']}\n# rerun with: ispo {command or 'COMMAND'} --config "
        f"{target.name}  (command-line flags override these values)\n"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    from ispo.io.write import atomic_write

    return atomic_write(
        target, header + yaml.safe_dump(body, sort_keys=False, default_flow_style=False)
    )


def _plain(value: Any) -> Any:
    """YAML/JSON-safe plain data: paths as strings, tuples as lists, numpy scalars as Python."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def current_params() -> dict[str, Any]:
    """The parameters of the running ispo command (command line, config file and defaults)."""
    ctx = _current_context()
    if ctx is None:
        raise ValueError("current_params() is only available inside a running ispo command")
    return {k: _plain(v) for k, v in ctx.params.items()}


def _current_context():
    """The running click context (Typer's bundled click or click itself), or None."""
    for module in ("typer._click.globals", "click.globals"):
        try:
            get = __import__(module, fromlist=["get_current_context"]).get_current_context
        except ImportError:
            continue
        ctx = get(silent=True)
        if ctx is not None:
            return ctx
    return None
