"""Running one command over many processes: ``torchrun --nproc_per_node=N -m ispo ...``.

torchrun (or any launcher that sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``) starts the same command once per GPU, on one node or many. :func:`init` reads
those variables and joins the process group (NCCL on CUDA, gloo on CPU); without them it is a
no-op and everything below behaves as in a single process (rank 0 of 1).

The division of work is by index, never by duplication: each work item still to do (a shard of
cells, a chunk of rows) belongs to exactly one rank (:func:`mine`, :func:`block`), each rank
writes its own parts, and rank 0 merges them in input order after :func:`barrier`. Only rank 0
prints progress and logs; the other ranks keep errors only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch

from ispo.errors import IspoError

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node (they share its cores)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> DistInfo:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        return cls(rank, world, local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))


_info = DistInfo()


def info() -> DistInfo:
    """This process's place (rank 0 of 1 until :func:`init` found a launcher's variables)."""
    return _info


def is_main() -> bool:
    return _info.main


def init(device: str = "auto", *, timeout_s: float = 3600.0) -> str:
    """Join the process group when launched by torchrun; returns the device this rank uses.

    ``device`` is the user's choice (``auto``, ``cpu``, ``cuda``, ``cuda:1``...). Under torchrun
    any CUDA choice (and ``auto`` when CUDA is visible) becomes ``cuda:LOCAL_RANK``, so each
    process has its own GPU; the backend is NCCL for CUDA, gloo otherwise. Idempotent.
    ``timeout_s`` bounds a wait at a barrier or collective (work is dealt evenly, so ranks
    meet within about one shard of each other).
    """
    global _info
    env = DistInfo.from_env()
    if not env.active:
        return device
    if torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda")):
        # one GPU per process; a launcher that shows each process only its own GPU works too
        idx = env.local_rank % torch.cuda.device_count()
        if str(device).startswith("cuda:") and device != f"cuda:{idx}":
            log.warning("under torchrun each process uses its own GPU: %s -> cuda:%d", device, idx)
        device = f"cuda:{idx}"
        torch.cuda.set_device(idx)
    elif device == "auto":
        device = "cpu"
    if not torch.distributed.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        kw = {"device_id": torch.device(device)} if backend == "nccl" else {}
        torch.distributed.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kw)
    _info = env
    if not env.main:  # one voice: rank 0 logs and shows progress, the others only errors
        logging.getLogger("ispo").setLevel(logging.ERROR)
    log.info(
        "rank %d of %d on %s (%s)", env.rank, env.world, device, torch.distributed.get_backend()
    )
    return device


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _info.active:
        if torch.distributed.get_backend() == "nccl":
            torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
        else:
            torch.distributed.barrier()


def _reduce(values, op) -> list[float]:
    if not _info.active:
        return [float(v) for v in values]
    nccl = torch.distributed.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    t = torch.tensor(values, dtype=torch.float64, device=dev)
    torch.distributed.all_reduce(t, op=op)
    return t.cpu().tolist()


def all_sum(*values: float) -> list[float]:
    """Sum of each value over all ranks (the values themselves in a single process)."""
    return _reduce(values, torch.distributed.ReduceOp.SUM)


def gather(value: T) -> list[T]:
    """Every rank's (picklable, small) ``value``, in rank order; ``[value]`` in one process."""
    if not _info.active:
        return [value]
    out: list = [None] * _info.world
    torch.distributed.all_gather_object(out, value)
    return out


def mine(items: Iterable[T], rank: int | None = None, world: int | None = None) -> Iterator[T]:
    """This rank's share of ``items``, dealt round-robin by position (every item once overall).

    Deal only the work still to do (e.g. shards not yet recorded), so that a resumed run is
    spread evenly whatever the earlier run finished. ``rank``/``world`` default to this process's.
    """
    rank = _info.rank if rank is None else rank
    world = _info.world if world is None else world
    return (x for k, x in enumerate(items) if k % world == rank)


def block(n: int, rank: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous block of ``range(n)``: sizes differ by at most one, none overlap."""
    rank = _info.rank if rank is None else rank
    world = _info.world if world is None else world
    return range(rank * n // world, (rank + 1) * n // world)


def shard_writer(out, fingerprint: dict, *, resume: bool, overwrite: bool):
    """A :class:`ispo.io.shards.ShardWriter` for this rank.

    Rank 0 prepares the parts folder (refusing or clearing an old run, as in one process); the
    other ranks join it after a barrier and record their shards in their own manifest file.
    """
    from ispo.io.shards import ShardWriter

    writer = None
    if _info.main:
        writer = ShardWriter(out, fingerprint, resume=resume, overwrite=overwrite)
    barrier()
    if not _info.main:
        writer = ShardWriter(out, fingerprint, resume=resume, overwrite=overwrite, rank=_info.rank)
    barrier()  # every rank has read the same manifests before any rank writes a part
    return writer


@contextmanager
def discarded_on_bad_input(writer, resume: bool) -> Iterator[None]:
    """Bad input found mid-run (an IspoError: bad counts, NaN results...): a fresh
    single-process run that finished no shard leaves no parts folder behind, so the corrected
    command runs without --overwrite (a resumed or multi-process run keeps its parts; None:
    nothing is written)."""
    try:
        yield
    except IspoError:
        if writer is not None and not _info.active and not resume and not writer.manifest["done"]:
            import shutil

            shutil.rmtree(writer.parts, ignore_errors=True)
        raise


def close() -> None:
    """Leave the process group (end of a command)."""
    global _info
    if _info.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    _info = DistInfo()
