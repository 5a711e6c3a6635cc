"""Surviving out-of-memory: a batch that does not fit is split and retried, never the run lost.

A token budget that suits most batches can still be too much for one (long cells, a fragmented
allocator, another process on the GPU). :class:`OomSplitter` runs a batch; on an out-of-memory
error it frees the cache, halves the batch, retries the halves, and from then on pre-splits any
batch above the size that failed (the run's token budget shrinks once, it is logged, and later
batches do not fail again). Only a single item that alone does not fit is an error.

Splitting changes which cells share a batch, so results stay equal to within float rounding of
padding-free math (cosine ~1 - 1e-7), not bit for bit; a run that never hits the limit is
untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import torch

from ispo import faults
from ispo.errors import IspoError

log = logging.getLogger(__name__)
B = TypeVar("B")  # a batch: cell indices, (cell, row range) chunks ...
R = TypeVar("R")  # what running it gives

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


def is_oom(exc: BaseException) -> bool:
    """An out-of-memory error of any device (CUDA's own class, or a backend's RuntimeError)."""
    if isinstance(exc, OOM_ERRORS):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free_cache() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def halve(batch: Sequence) -> tuple[Sequence, Sequence] | None:
    """Two halves of a batch, or None when it cannot shrink.

    A batch is a sequence of items (cell indices...); a lone ``(key, start, stop)`` row range
    (a cell's perturbation rows) splits into two row ranges.
    """
    if len(batch) >= 2:
        mid = len(batch) // 2
        return batch[:mid], batch[mid:]
    item = batch[0] if len(batch) else None
    if isinstance(item, tuple) and len(item) == 3 and item[2] - item[1] >= 2:
        key, a, b = item
        mid = (a + b) // 2
        return [(key, a, mid)], [(key, mid, b)]
    return None


class OomSplitter(Generic[B, R]):
    """Run batches with split-and-retry on out-of-memory.

    Parameters
    ----------
    cost
        Tokens of a batch (cells x padded length): what the budget counts (default: items).
    split
        Two smaller batches that together are the batch, in order, or None if it cannot split.
    what
        Name of the work in log lines (``embed``, ``perturb``).
    """

    def __init__(
        self,
        cost: Callable[[B], int] = len,
        split: Callable[[B], tuple[B, B] | None] = halve,
        what: str = "batch",
    ) -> None:
        self.cost, self.split, self.what = cost, split, what
        self.cap: int | None = None  # token budget after an out-of-memory; None until one
        self.n_oom = 0

    def run(
        self, fn: Callable[[B], R], batch: B, cost: Callable[[B], int] | None = None
    ) -> Iterator[tuple[B, R]]:
        """Yield ``(part, fn(part))`` for parts that together are ``batch``, in its order.

        ``cost`` overrides the constructor's for this batch (the splitter, and the reduced
        budget it learned, can then be shared by calls over different cells).
        """
        cost = cost or self.cost
        todo = [batch]
        while todo:
            part = todo.pop()
            tokens = cost(part)
            if self.cap is not None and tokens > self.cap:
                halves = self.split(part)
                if halves is not None:
                    todo.extend(reversed(halves))
                    continue
            try:
                faults.before_batch(tokens)  # ISPO_FAULT: simulated out-of-memory
                result = fn(part)
            except Exception as exc:
                if not is_oom(exc):
                    raise
                halves = self.split(part)
                if halves is None:
                    raise IspoError(
                        f"{self.what}: one item of {tokens:,} tokens does not fit in "
                        "device memory even alone: use a smaller model or input "
                        "size, or a device with more memory"
                    ) from None
            else:
                yield part, result
                continue
            # out of the except block: the failed attempt's tensors are released before retrying
            _free_cache()
            self.n_oom += 1
            new_cap = max(1, tokens // 2)
            self.cap = new_cap if self.cap is None else min(self.cap, new_cap)
            log.warning(
                "%s: out of device memory on a batch of %s tokens; split in two and "
                "retried, token budget now %s",
                self.what,
                f"{tokens:,}",
                f"{self.cap:,}",
            )
            todo.extend(reversed(halves))
