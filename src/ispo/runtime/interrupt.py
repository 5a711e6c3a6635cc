"""Stopping a run on SIGINT (Ctrl-C) or SIGTERM (a scheduler, a workflow manager) so that it
says so: one line naming how far it got, exit status 128 + the signal (130, 143), and the
finished shards kept for ``--resume``.

The command line installs :func:`handlers` around a command: either signal then raises
:class:`Interrupted` (a ``BaseException``, so no ``except Exception`` swallows it) in the main
thread. A long loop wraps itself in :func:`noting`, which writes how far the run got into the
exception on its way out ("3 of 24 shards"). Worker processes ignore SIGINT (the terminal sends
it to the whole process group; the main process stops them) and die quietly on SIGTERM
(:func:`quiet_worker`). :data:`stopping` is set as soon as a signal arrives, for threads that
wait on something (the ``hang_after_shard`` fault of :mod:`ispo.faults`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Set once SIGINT or SIGTERM arrived (under :func:`handlers`); threads may poll it.
stopping = threading.Event()
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal; ``progress`` says how far it got (or is None)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.progress: str | None = None

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process a signal ended."""
        return 128 + self.signum

    def message(self, resumable: bool = True) -> str:
        """The one line a user sees; ``resumable``: the command has ``--resume``."""
        where = f" after {self.progress}" if self.progress else ""
        again = "; rerun the same command with --resume" if resumable else ""
        return f"interrupted ({signal.Signals(self.signum).name}){where}{again}"


def _raise(signum: int, _frame) -> None:
    stopping.set()
    raise Interrupted(signum)


@contextmanager
def handlers() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (main thread only;
    elsewhere a no-op); the previous handlers come back after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _raise) for s in SIGNALS}
    stopping.clear()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def noting(progress: Callable[[], str]) -> Iterator[None]:
    """Write ``progress()`` ("3 of 24 shards") into an :class:`Interrupted` leaving the block."""
    try:
        yield
    except Interrupted as exc:
        if exc.progress is None:
            exc.progress = progress()
        raise


def quiet_worker() -> None:
    """In a worker process: ignore SIGINT (the main process stops the workers) and take the
    default action on SIGTERM (end, without a traceback)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
