"""Fault injection: the one documented way to make ispo fail (or chunk) on purpose.

Tests and recovery drills set the ``ISPO_FAULT`` environment variable to comma-separated
``name:N`` entries instead of patching ispo's internals:

``crash_after_shard:N``
    Raise :class:`InjectedFault` once the N-th output shard of this process is written
    (``perturb`` and streamed ``embed`` with ``out``): a kill between shards.
``hang_after_shard:N``
    Stop (sleep until killed or interrupted) once the N-th output shard is written: a run that
    is certainly mid-way when an outside ``kill -9``, SIGINT or SIGTERM arrives.
``crash_after_epoch:N``
    Raise :class:`InjectedFault` once the N-th epoch checkpoint of ``finetune`` is saved: a
    kill between epochs.
``hang_after_epoch:N``
    Stop (sleep until killed) once the N-th epoch checkpoint is saved (an outside ``kill -9``).
``crash_in_part:N``
    Raise :class:`InjectedFault` when the N-th part file is written but not yet renamed into
    place: a kill mid-write, which leaves a ``.tmp`` file and no manifest entry.
``oom_above_tokens:N``
    Every batch of more than N tokens raises ``torch.OutOfMemoryError``, as a GPU with that much
    memory would (the split-and-retry path, on any device).
``batch_error:1``
    Every batch raises :class:`InjectedFault` (an error that is not out-of-memory: it must
    propagate, not be split and retried).
``tokenize_chunk:N``
    Tokenize at most N cells per chunk (the chunk boundaries of the streaming passes).
``no_int8:1``
    Quantizing to int8 fails as on a torch build without an int8 backend.
``kill_trial_above_tokens:N``
    An ``ispo tune`` trial whose token budget is over N kills its own process (SIGKILL) as it
    starts, as the host's out-of-memory killer would: a setting that dies on every attempt.

Counts are per process and restart whenever the variable changes or :func:`reset` is called;
:func:`count` says how often a site was reached while the variable was set. Unset (always, in
normal use), every check is one environment lookup.

A variable left set in a shell would change a production run without a word, so every command
checks it first (:func:`announce`, before any model loads): a malformed value is refused in one
line, a valid one is announced with a warning, and every output's metadata records it
(:func:`describe`, through :meth:`ispo.model.load.GeneformerModel.metadata`).
"""

from __future__ import annotations

import logging
import os
import time

from ispo.errors import IspoError
from ispo.runtime import interrupt

log = logging.getLogger(__name__)
ENV = "ISPO_FAULT"
NAMES = (
    "crash_after_shard",
    "hang_after_shard",
    "crash_after_epoch",
    "hang_after_epoch",
    "crash_in_part",
    "oom_above_tokens",
    "batch_error",
    "tokenize_chunk",
    "no_int8",
    "kill_trial_above_tokens",
)
_state: dict = {"raw": "", "spec": {}, "counts": {}, "announced": ""}


class InjectedFault(RuntimeError):
    """Raised where ``ISPO_FAULT`` asked for a failure (stands in for a kill or a crash)."""


def parse(raw: str) -> dict[str, int]:
    """``"a:1,b:2"`` -> ``{"a": 1, "b": 2}``; refuses unknown names and non-integer values."""
    spec: dict[str, int] = {}
    for entry in filter(None, (e.strip() for e in raw.split(","))):
        name, _, value = entry.partition(":")
        if name not in NAMES or not value.strip().isdigit():
            raise IspoError(
                f"{ENV} entry {entry!r} is not NAME:N with NAME one of {', '.join(NAMES)}: "
                f"fix or unset {ENV}"
            )
        spec[name] = int(value)
    return spec


def _spec() -> dict[str, int]:
    raw = os.environ.get(ENV, "")
    if raw != _state["raw"]:
        _state.update(raw=raw, spec=parse(raw), counts={})
    return _state["spec"]


def describe() -> str | None:
    """The ``ISPO_FAULT`` entries in force (``"crash_after_shard:2"``), or None when unset:
    what an output's metadata records. IspoError when the value is malformed."""
    return ",".join(f"{name}:{n}" for name, n in _spec().items()) or None


def announce() -> None:
    """Check ``ISPO_FAULT`` at the start of a run: IspoError (one line) when it is malformed, a
    warning naming it when it is set (once per value and process), nothing when unset."""
    spec = describe()
    if spec is not None and _state["announced"] != _state["raw"]:
        _state["announced"] = _state["raw"]
        log.warning(
            "%s=%s is set: faults will be injected into this run on purpose; unset it for a "
            "real run",
            ENV,
            spec,
        )


def _hit(site: str) -> int:
    """Count one arrival at ``site`` (only while ``ISPO_FAULT`` is set); the new count."""
    counts = _state["counts"]
    counts[site] = counts.get(site, 0) + 1
    return counts[site]


def reset() -> None:
    """Start counting again (a second injected run with the same ``ISPO_FAULT``)."""
    _state["counts"] = {}


def count(site: str) -> int:
    """How often ``site`` (``shard``, ``part``, ``batch``, ``epoch``) was reached since
    ISPO_FAULT changed."""
    _spec()
    return _state["counts"].get(site, 0)


def shard_written() -> None:
    """Called after each output shard is recorded as done."""
    spec = _spec()
    if not spec:
        return
    n = _hit("shard")
    if n == spec.get("crash_after_shard"):
        raise InjectedFault(f"{ENV}: crash after shard {n}")
    while n == spec.get("hang_after_shard") and not interrupt.stopping.is_set():
        time.sleep(0.1)  # until the drill kills or interrupts the process


def epoch_saved() -> None:
    """Called after each epoch checkpoint of a fine-tuning run is saved."""
    spec = _spec()
    if not spec:
        return
    n = _hit("epoch")
    if n == spec.get("crash_after_epoch"):
        raise InjectedFault(f"{ENV}: crash after epoch {n}")
    while n == spec.get("hang_after_epoch"):
        time.sleep(1.0)  # until the drill kills the process


def part_written() -> None:
    """Called after a part file is written to its temporary name, before the rename."""
    spec = _spec()
    if spec and _hit("part") == spec.get("crash_in_part"):
        raise InjectedFault(f"{ENV}: crash while writing part {spec['crash_in_part']}")


def before_batch(tokens: int) -> None:
    """Called before a batch of ``tokens`` tokens runs on the model."""
    spec = _spec()
    if not spec:
        return
    _hit("batch")
    if spec.get("batch_error"):
        raise InjectedFault(f"{ENV}: injected batch error")
    limit = spec.get("oom_above_tokens")
    if limit is not None and tokens > limit:
        import torch

        _hit("oom")
        raise torch.OutOfMemoryError(
            f"{ENV}: out of memory on {tokens} tokens (simulated limit {limit})"
        )


def active(name: str) -> bool:
    """Whether ``ISPO_FAULT`` holds ``name`` with a non-zero value (``no_int8``)."""
    return bool(_spec().get(name))


def chunk_cap(default: int) -> int:
    """Cells per tokenizer chunk: ``default``, or less under ``tokenize_chunk:N``."""
    return min(default, _spec().get("tokenize_chunk") or default)


def trial_started(batch_tokens: int) -> None:
    """Called as an ``ispo tune`` trial with a budget of ``batch_tokens`` starts measuring."""
    limit = _spec().get("kill_trial_above_tokens")
    if limit is not None and batch_tokens > limit:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)
