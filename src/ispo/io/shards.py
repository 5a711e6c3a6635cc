"""Sharded, resumable table output.

A long run writes one Parquet part per shard of cells into ``OUT.parts/`` and records it in a
manifest only after the part is complete (written to a temporary name, then renamed), so a run
killed at any point leaves only whole parts behind. Each part is recorded with its size and
SHA-256: ``--resume`` checks every recorded part, skips the whole ones and recomputes a damaged
or missing one (saying which) instead of failing on it or merging it. The finished run is merged
into the single file ``OUT`` and the parts folder removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ispo import faults
from ispo.errors import IspoError
from ispo.io.write import atomic_write, replacing

log = logging.getLogger(__name__)

# Parts are temporary (merged or read back at the end): no compression, no dictionary pages,
# which on float columns cost CPU for nothing (the writer must keep up with the device).
PART_FORMAT = {"compression": "none", "use_dictionary": False}


def _problem(folder: Path, entry: object, checksum: bool) -> str | None:
    """Why a recorded part cannot be used (missing, wrong size or checksum, recorded without
    them), or None; ``checksum``: read the file to compare its SHA-256, else its size only."""
    if not (isinstance(entry, dict) and {"file", "bytes", "sha256"} <= entry.keys()):
        return f"part {entry} is recorded without size and checksum (an older ispo)"
    path = folder / entry["file"]
    if not path.is_file():
        return f"part {entry['file']} is missing"
    size = path.stat().st_size
    if size != entry["bytes"]:
        return f"part {entry['file']} is damaged ({size:,} bytes, {entry['bytes']:,} recorded)"
    if checksum:
        with path.open("rb") as f:
            if hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                return f"part {entry['file']} is damaged (its checksum is not the recorded one)"
    return None


def _unreadable(path: Path, exc: Exception) -> IspoError:
    return IspoError(
        f"part {path} is unreadable ({type(exc).__name__}): rerun the same command with "
        "--resume, which checks every part and recomputes the damaged ones"
    )


def read_part(path: Path) -> pa.Table:
    """One recorded part, or one line saying what to do when it cannot be read."""
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from exc


def part_footer(path: Path) -> pq.FileMetaData:
    """A recorded part's Parquet footer (rows, schema) without reading its data."""
    try:
        return pq.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise _unreadable(path, exc) from exc


class ShardWriter:
    """Parts of a table, written atomically and listed in ``manifest.json``."""

    def __init__(
        self, out: str | Path, fingerprint: dict, *, resume: bool, overwrite: bool, rank: int = 0
    ):
        self.out = Path(out)
        self.parts = self.out.with_name(self.out.name + ".parts")
        # under torchrun each rank records its shards in its own file (rank 0: manifest.json);
        # a run reads them all, so it resumes whatever number of processes wrote them
        name = "manifest.json" if rank == 0 else f"manifest-rank{rank}.json"
        self.manifest_path = self.parts / name
        if rank == 0:  # the other ranks join the folder rank 0 prepared (ispo.runtime.dist)
            if self.out.exists() and not overwrite:
                raise IspoError(
                    f"output {self.out} already exists: choose another path or pass --overwrite"
                )
            if self.parts.exists() and not resume:
                if not overwrite:
                    raise IspoError(
                        f"{self.parts} holds an unfinished run: pass --resume to "
                        "continue it, or --overwrite to start again"
                    )
                shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as stored
        self.manifest = {"fingerprint": self.fingerprint, "done": {}}
        self.refresh(checksum=True)

    def refresh(self, checksum: bool = False) -> None:
        """Add the shards every manifest in the folder records (other ranks', earlier runs')
        whose parts are whole. ``checksum``: compare each part's SHA-256 too, not only its size
        (once, when the writer opens the folder). A shard with a damaged or missing part is
        left out, so it is computed again, and a warning says which."""
        problems: dict[str, str] = {}
        for path in sorted(self.parts.glob("manifest*.json")):
            try:
                old = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise IspoError(
                    f"{path} is unreadable ({type(exc).__name__}): pass --overwrite to start again"
                ) from exc
            if old.get("fingerprint") != self.fingerprint:
                raise IspoError(
                    f"{self.parts} was made with other options or data: rerun with "
                    "the same options, or --overwrite to start again"
                )
            for shard, entries in old["done"].items():
                why = [_problem(self.parts, e, checksum) for e in entries.values()]
                if any(why):
                    problems.setdefault(shard, "; ".join(filter(None, why)))
                else:
                    self.manifest["done"][shard] = entries
        for shard, why in problems.items():
            if shard not in self.manifest["done"]:
                log.warning("shard %s: %s: recomputing it", shard, why)

    def done(self, shard: int) -> bool:
        return str(shard) in self.manifest["done"]

    def write(self, shard: int, tables: dict[str, pd.DataFrame | pa.Table]) -> None:
        """Write every table of one shard (pandas or Arrow), then record the shard as done,
        with each part's size and SHA-256 (of the bytes written, not read back)."""
        entries = {}
        for kind, df in tables.items():
            name = f"{kind}-{shard:06d}.parquet"
            tmp = self.parts / f".{name}.tmp"
            table = (
                df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
            )
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, **PART_FORMAT)
            data = sink.getvalue()
            with tmp.open("wb") as f:
                f.write(data)
            faults.part_written()  # ISPO_FAULT: a kill mid-write
            os.replace(tmp, self.parts / name)
            digest = hashlib.sha256(data).hexdigest()
            entries[kind] = {"file": name, "bytes": data.size, "sha256": digest}
        self.manifest["done"][str(shard)] = entries
        tmp = self.parts / f".{self.manifest_path.name}.tmp"  # one per rank: ranks write at once
        tmp.write_text(json.dumps(self.manifest))
        os.replace(tmp, self.manifest_path)
        faults.shard_written()  # ISPO_FAULT: a kill between shards

    def part(self, shard: int, kind: str) -> Path:
        """The file of one recorded part."""
        return self.parts / self.manifest["done"][str(shard)][kind]["file"]

    def _files(self, kind: str) -> list[Path]:
        done = self.manifest["done"]
        return [self.part(int(s), kind) for s in sorted(done, key=int) if kind in done[s]]

    def read(self, kind: str) -> pd.DataFrame:
        """All recorded parts of one table, in shard order."""
        files = self._files(kind)
        if not files:
            return pd.DataFrame()
        return pd.concat([read_part(f).to_pandas() for f in files], ignore_index=True)

    def n_rows(self, kind: str) -> int:
        """Rows of one table over all recorded parts (from the Parquet footers only)."""
        return sum(part_footer(f).num_rows for f in self._files(kind))

    def finish(self, outputs: dict[str, Path], metadata: dict, meta_path: Path) -> None:
        """Merge each table's parts into one Parquet file, part by part (memory stays bounded),
        write the metadata, all atomically, then drop the parts folder."""
        for kind, path in outputs.items():
            files = self._files(kind)
            if not files:
                continue
            schema = part_footer(files[0]).schema.to_arrow_schema()
            schema = schema.with_metadata(
                {**(schema.metadata or {}), b"ispo": json.dumps(metadata, default=str).encode()}
            )
            with replacing(path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
                for f in files:
                    writer.write_table(read_part(f).cast(schema))
        atomic_write(meta_path, json.dumps(metadata, indent=2, default=str))
        shutil.rmtree(self.parts, ignore_errors=True)
