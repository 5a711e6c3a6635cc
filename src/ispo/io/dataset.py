"""Tokenized datasets as input: the folders Geneformer's ``TranscriptomeTokenizer`` writes.

A Hugging Face ``Dataset.save_to_disk`` folder holds ``state.json`` (which Arrow files, in
order), ``dataset_info.json`` and the Arrow files themselves (IPC stream format): one row per
cell with ``input_ids`` (its rank-value tokens), ``length`` and the cell attributes the tokenizer
was asked to keep. :class:`DatasetSource` memory-maps the Arrow files with pyarrow (no copy in
memory: tokens are read by rows, as counts are from an ``.h5ad``) and gives the attributes as
``obs``. The tokens are used as given, never re-ranked: :class:`ispo.tokens.GivenTokens` checks
them against the run's vocabulary and model. A dataset has no genes-by-cells matrix, so ``var``
is empty and ``--layer``/``--gene-key`` do not apply.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
from anndata.io import write_elem

from ispo.errors import IspoError
from ispo.io.read import Source

TOKENS, LENGTH = "input_ids", "length"
CELL_ID = "cell_id"  # an attribute that names the cells, when the dataset has one


def is_dataset(path: Path) -> bool:
    """A ``save_to_disk`` folder (one dataset, or a dict of splits)."""
    return path.is_dir() and any((path / f).is_file() for f in ("state.json", "dataset_dict.json"))


class DatasetSource(Source):
    """A tokenized dataset folder opened for reading by rows (see the module docstring)."""

    tokenized = True

    def __init__(self, path: Path) -> None:
        self.spec = str(path)
        if (path / "dataset_dict.json").is_file():
            splits = sorted(p.name for p in path.iterdir() if is_dataset(p))
            raise IspoError(
                f"{path} holds several splits ({', '.join(splits)}): give one split's folder, "
                f"e.g. {path / (splits[0] if splits else 'train')}"
            )
        table = _read_table(path)
        if TOKENS not in table.column_names:
            raise IspoError(
                f"{path} has no {TOKENS!r} column (it has {table.column_names[:10]}): give a "
                "dataset written by Geneformer's TranscriptomeTokenizer"
            )
        ids = table.column(TOKENS)
        if not pa.types.is_list(ids.type) and not pa.types.is_large_list(ids.type):
            raise IspoError(f"{TOKENS!r} of {path} is {ids.type}, not lists of token ids")
        if ids.null_count:
            raise IspoError(f"{ids.null_count} cell(s) of {path} have no {TOKENS!r}: drop them")
        self.chunks = ids.chunks
        self.first_row = np.concatenate([[0], np.cumsum([len(c) for c in self.chunks])])
        self.lengths = np.concatenate(
            [np.diff(c.offsets.to_numpy()) for c in self.chunks] or [np.zeros(0, np.int64)]
        )
        obs = table.drop_columns([TOKENS]).to_pandas()
        _check_length(obs, self.lengths, path)
        obs.index = _cell_names(obs)
        self.content = json.loads((path / "state.json").read_text()).get("_fingerprint", "")
        super().__init__(str(path), obs, pd.DataFrame(index=pd.Index([], dtype=str)))

    def token_rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens as int32, lengths) of rows ``[start, stop)``: read from the mapped files."""
        tokens, lengths = [], []
        for k, chunk in enumerate(self.chunks):
            lo, hi = max(start, self.first_row[k]), min(stop, self.first_row[k + 1])
            if lo >= hi:
                continue
            part = chunk.slice(lo - self.first_row[k], hi - lo)
            tokens.append(part.flatten().to_numpy().astype(np.int32))
            lengths.append(self.lengths[lo:hi])
        if not tokens:
            return np.zeros(0, np.int32), np.zeros(0, np.int64)
        return np.concatenate(tokens), np.concatenate(lengths)

    def matrix(self, layer: str | None):
        raise IspoError(
            f"{self.name} is a tokenized dataset: it has no counts (--layer does not apply)"
        )

    def copy_to(self, h5: h5py.File, name: str) -> None:
        if name == "var":  # no genes-by-cells matrix: an empty var keeps the output an AnnData
            write_elem(h5, "var", self.var)

    def fingerprint(self) -> str:
        """The dataset's own content fingerprint (``state.json``), its cells and their names."""
        h = hashlib.sha1(f"{self.content}\0{self.n_obs}".encode())
        h.update(self.lengths.tobytes())
        h.update("\0".join(map(str, self.obs.index)).encode())
        return h.hexdigest()


def _read_table(path: Path) -> pa.Table:
    """Every Arrow file of the dataset, memory-mapped, as one table (chunks, not copies)."""
    try:
        state = json.loads((path / "state.json").read_text())
        files = [path / f["filename"] for f in state["_data_files"]]
        tables = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files]
    except (OSError, KeyError, TypeError, ValueError, pa.ArrowException) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise IspoError(
            f"cannot read the dataset {path} ({type(exc).__name__}: {detail}): is it a complete "
            "Dataset.save_to_disk folder?"
        ) from exc
    if not tables:
        raise IspoError(f"{path} lists no Arrow file in state.json: is the dataset complete?")
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise IspoError(f"the Arrow files of {path} have different columns: {exc}") from exc


def _check_length(obs: pd.DataFrame, lengths: np.ndarray, path: Path) -> None:
    """The ``length`` column, where present, must be each cell's number of tokens."""
    if LENGTH in obs.columns:
        bad = np.flatnonzero(obs[LENGTH].to_numpy() != lengths)
        if len(bad):
            raise IspoError(
                f"{path}: 'length' of cell {bad[0]} is {obs[LENGTH].iloc[bad[0]]} but it has "
                f"{lengths[bad[0]]} tokens: rewrite the dataset's lengths"
            )


def _cell_names(obs: pd.DataFrame) -> pd.Index:
    """The cells' names: the ``cell_id`` attribute when it names every cell once, else the row
    numbers (Geneformer's datasets keep no cell names unless asked)."""
    if CELL_ID in obs.columns and obs[CELL_ID].is_unique:
        return pd.Index(obs[CELL_ID].astype(str).to_numpy())
    return pd.Index(np.arange(len(obs)).astype(str))
