"""Worker processes ahead of the device: results in input order, bounded, errors at their item."""

from __future__ import annotations

import os

import pytest

from ispo.runtime.feed import OrderedMap, default_workers


def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_at_five(x: int) -> int:
    if x == 5:
        raise ValueError("item 5 is bad")
    return x


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_results_come_in_input_order(workers):
    got = list(OrderedMap(square, range(40), workers=workers, depth=4))
    assert [v for v, _ in got] == [x * x for x in range(40)]
    pids = {p for _, p in got}
    assert (os.getpid() in pids) == (workers == 0)  # workers > 0: never in this process


@pytest.mark.parametrize("workers", [0, 2])
def test_an_error_is_raised_at_its_item(workers):
    seen = []
    with pytest.raises(ValueError, match="item 5 is bad"):
        for x in OrderedMap(fail_at_five, range(10), workers=workers):
            seen.append(x)
    assert seen == [0, 1, 2, 3, 4]


def test_closing_early_stops_the_workers():
    feed = OrderedMap(square, range(1000), workers=2, depth=2)
    assert next(feed)[0] == 0
    feed.close()
    assert feed.pool is None


def test_default_workers_leaves_the_main_processes_their_cores():
    cores = len(os.sched_getaffinity(0))
    assert default_workers() == max(0, cores - 1)
    assert default_workers(local_processes=cores) == 0
