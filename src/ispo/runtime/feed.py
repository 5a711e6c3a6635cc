"""Feeding the device: host work (reading, tokenizing) done ahead of it, in order, bounded.

:func:`prefetch` runs an iterator one item ahead in a background thread (enough when one core
keeps up). :class:`OrderedMap` runs a task on many items in worker *processes* (tokenizing holds
the GIL, so threads would not scale), at most ``depth`` results waiting, yielded in the order of
the items, so what the device sees does not depend on the number of workers.

Workers are forked where the platform allows (Linux): no re-import and no pickling of the task's
state, as PyTorch's DataLoader does; a task must then not touch the device or files the parent
opened (it opens its own). Elsewhere they are spawned and the state is pickled.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from ispo.hardware import this_cpu
from ispo.runtime import interrupt

T = TypeVar("T")
R = TypeVar("R")

_TASK: Callable[[Any], Any] | None = None  # the task of this worker process


def default_workers(local_processes: int = 1) -> int:
    """Cores left after the main process(es) of this node: the default ``--workers``."""
    return max(0, this_cpu().cores // max(1, local_processes) - 1)


def _init(task: Callable[[Any], Any]) -> None:
    global _TASK
    _TASK = task
    _die_with_parent()
    interrupt.quiet_worker()  # Ctrl-C reaches the whole group: the main process stops us


def _die_with_parent() -> None:
    """A worker must not outlive its run: after ``kill -9`` of the main process (which
    ``--resume`` is made for) no orphan keeps reading. Linux: PR_SET_PDEATHSIG."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # elsewhere: the pool's own shutdown, which covers every ordinary exit


def _run(item: Any) -> Any:
    assert _TASK is not None, "worker started without its task"
    return _TASK(item)


def _context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


class OrderedMap(Iterator[R]):
    """``task(item)`` for each item, computed by ``workers`` processes, yielded in order.

    The workers start (fork) when this is made, before the caller starts threads of its own.
    At most ``depth`` (default ``2 * workers``) items are in flight, so memory stays bounded
    however slow the consumer. ``workers <= 0`` runs the task here, in a background thread one
    item ahead. An exception in a task is raised here, at its item. ``close()`` (or the end of
    the items) stops the workers.
    """

    def __init__(
        self, task: Callable[[T], R], items: Iterable[T], *, workers: int, depth: int | None = None
    ) -> None:
        self.pool = None
        if workers <= 0:
            self.results: Iterator[R] = prefetch(task(item) for item in items)
            return
        self.pool = _context().Pool(workers, initializer=_init, initargs=(task,))
        self.results = self._ordered(iter(items), depth or 2 * workers)

    def _ordered(self, items: Iterator[T], depth: int) -> Iterator[R]:
        pending: deque = deque()
        for item in items:
            pending.append(self.pool.apply_async(_run, (item,)))
            if len(pending) >= depth:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __next__(self) -> R:
        try:
            return next(self.results)
        except StopIteration:
            self.close()
            raise

    def close(self) -> None:
        close = getattr(self.results, "close", None)
        if close is not None:
            close()
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def prefetch(it: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Run ``it`` in a background thread, ``depth`` items ahead (tokenize while embedding)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in it:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(end)
        except BaseException as exc:
            q.put(exc)

    thread = threading.Thread(target=work, name="ispo-tokenize", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
