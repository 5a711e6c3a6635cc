"""Cell-state embeddings as a file: Geneformer's ``get_state_embs``, and what perturb reads back.

``ispo embed --state-key K --states-out FILE`` summarises the cell embeddings of each state (each
value of ``obs[K]``) into one vector; ``ispo perturb --state-embs FILE`` measures shifts toward
those vectors instead of recomputing them from its own input (Geneformer's ``state_embs_dict``:
a goal state computed once on a large reference). Summaries (``--summary-stat``):

- ``mean`` / ``exact_mean``: the mean (Geneformer's ``mean`` approximates it with t-digests; ispo
  computes it exactly, so both names give the exact mean);
- ``median``: the per-dimension median (the midpoint of the two middle values for an even count:
  what Geneformer's t-digest ``percentile(50)`` approximates);
- ``exact_median``: ``torch.median`` per dimension, as Geneformer's ``exact_median`` (the lower of
  the two middle values for an even count).

The file is safetensors (one float32 vector per state; never a pickle) with what it was computed
with in its metadata: model name and weights digest, width, ``emb_layer``, pooling, summary,
state key and cell counts. A run whose model, width, layer or pooling differ is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from anndata.io import read_elem

from ispo.errors import IspoError
from ispo.io.write import atomic_output
from ispo.model.load import GeneformerModel

log = logging.getLogger(__name__)
STATS = ("mean", "median", "exact_mean", "exact_median")
BLOCK_ROWS = 16384  # embedding rows read at a time from the output


def check_stat(stat: str) -> str:
    if stat not in STATS:
        raise IspoError(f"--summary-stat must be one of {', '.join(STATS)}, not {stat!r}")
    return stat


def summarise(emb: np.ndarray, stat: str) -> np.ndarray:
    """One (h,) float32 vector of (n, h) embeddings (see the module docstring)."""
    if stat in ("mean", "exact_mean"):
        return emb.mean(0, dtype=np.float64).astype(np.float32)
    if stat == "median":
        return np.median(emb, axis=0).astype(np.float32)
    return torch.median(torch.from_numpy(np.ascontiguousarray(emb)), dim=0).values.numpy()


def model_digest(model: GeneformerModel) -> str:
    """A digest of the architecture and every weight: a moved or renamed checkpoint keeps it,
    another model (or a fine-tuned copy) does not."""
    h = hashlib.sha1(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name in sorted(model.state_dict):
        t = model.state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class StateEmbeddings:
    """One vector per cell state, with what it was computed with (``about``)."""

    vectors: dict[str, np.ndarray]
    about: dict = field(default_factory=dict)
    source: str = "memory"

    def save(self, path: str | Path, overwrite: bool = False) -> None:
        from safetensors.numpy import save_file

        with atomic_output(path, overwrite) as tmp:
            save_file(self.vectors, str(tmp), metadata={"ispo": json.dumps(self.about)})

    @classmethod
    def load(cls, path: str | Path) -> StateEmbeddings:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise IspoError(
                f"state embeddings {path} do not exist: write them with ispo embed "
                "--state-key K --states-out FILE"
            )
        try:
            with safe_open(str(path), framework="np") as f:
                about = json.loads((f.metadata() or {}).get("ispo", "{}"))
                vectors = {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:
            raise IspoError(
                f"cannot read state embeddings {path} ({type(exc).__name__}): is it a "
                "safetensors file written by ispo embed --states-out?"
            ) from exc
        if not vectors or any(v.ndim != 1 for v in vectors.values()):
            raise IspoError(
                f"{path} does not hold one vector per state: write it with ispo embed --states-out"
            )
        return cls(vectors, about, str(path))

    def check(self, model: GeneformerModel, emb_layer: int, pool: str) -> None:
        """Refuse vectors that do not belong to this run (one line naming the difference)."""
        width = {len(v) for v in self.vectors.values()}
        fix = "compute them with this run's model and settings (ispo embed --states-out)"
        if width != {model.config.hidden}:
            raise IspoError(
                f"state embeddings {self.source} are {sorted(width)[0]} wide but model "
                f"{model.name} is {model.config.hidden} wide: {fix}"
            )
        a = self.about
        if not a:
            log.warning("%s records no model or layer: only its width was checked", self.source)
            return
        if a.get("emb_layer") != emb_layer:
            raise IspoError(
                f"state embeddings {self.source} were taken at emb_layer {a.get('emb_layer')}, "
                f"this run uses {emb_layer}: pass --emb-layer {a.get('emb_layer')} or {fix}"
            )
        if a.get("pool") != pool:
            raise IspoError(
                f"state embeddings {self.source} are {a.get('pool')}-pooled, this run compares "
                f"{pool}-pooled cells (emb_mode): {fix}"
            )
        if a.get("model_digest") != model_digest(model):
            raise IspoError(
                f"state embeddings {self.source} come from model {a.get('model')}, not the "
                f"weights of {model.name}: {fix}"
            )

    def stack(self, names: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """(len(names), h) vectors of ``names`` (the target states), on ``device``."""
        missing = [n for n in names if n not in self.vectors]
        if missing:
            raise IspoError(
                f"state {missing[0]!r} is not in {self.source} (it has "
                f"{', '.join(sorted(self.vectors)[:10])}): choose one of those, or recompute"
            )
        return torch.from_numpy(np.stack([self.vectors[n] for n in names])).to(device)

    def digest(self) -> str:
        """What a resumed run must share: the vectors themselves."""
        h = hashlib.sha1()
        for k in sorted(self.vectors):
            h.update(k.encode())
            h.update(self.vectors[k].tobytes())
        return h.hexdigest()


def state_about(model: GeneformerModel, vocab, key: str) -> dict:
    """What a state file records of the run that computed it (what :meth:`check` compares)."""
    s = model.settings
    return {
        "model": model.name,
        "model_digest": model_digest(model),
        "hidden": model.config.hidden,
        "emb_layer": s.emb_layer,
        "pool": str(s.pool),
        "precision": str(s.precision),
        "vocab": vocab.source,
        "key": key,
    }


def states_of_output(
    out: str | Path, key: str, state_key: str, stat: str, about: dict
) -> StateEmbeddings:
    """Each state's summary of the embedded cells of an ``ispo embed`` output (``obsm[key]``,
    read in blocks; the median keeps a state's cells in memory, the mean only sums)."""
    with h5py.File(out, "r") as h5:
        obs = read_elem(h5["obs"])
        if state_key not in obs.columns:
            raise IspoError(
                f"state key {state_key!r} is not an obs column: choose one of "
                f"{list(obs.columns)[:10]}"
            )
        labels = obs[state_key].astype(str).to_numpy()
        done = obs["geneformer_embedded"].to_numpy(bool)
        ds = h5["obsm"][key]
        names = sorted(set(labels[done]))
        sums = {n: np.zeros(ds.shape[1]) for n in names}
        parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
        for a in range(0, ds.shape[0], BLOCK_ROWS):
            block, lab = ds[a : a + BLOCK_ROWS], labels[a : a + BLOCK_ROWS]
            ok = done[a : a + BLOCK_ROWS]
            for n in names:
                rows = block[ok & (lab == n)]
                if stat in ("mean", "exact_mean"):
                    sums[n] += rows.sum(0, dtype=np.float64)
                else:
                    parts[n].append(rows)
    counts = {n: int(((labels == n) & done).sum()) for n in names}
    if stat in ("mean", "exact_mean"):
        vectors = {n: (sums[n] / counts[n]).astype(np.float32) for n in names}
    else:
        vectors = {n: summarise(np.concatenate(parts[n]), stat) for n in names}
    about = {**about, "state_key": state_key, "summary_stat": stat, "n_cells": counts}
    return StateEmbeddings(vectors, about, str(out))
