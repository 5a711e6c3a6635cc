"""The output tables of one shard: one row per (cell, perturbation), and with
``emb_mode="cell_and_gene"`` one per (cell, perturbation, affected gene), in input order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ispo.io.vocab import Vocab
from ispo.perturbation.options import CellStates
from ispo.perturbation.perturber import Perturber, Shard


def empty_table(states: CellStates | None, classes: list[str] | None = None) -> pd.DataFrame:
    """No rows, typed like a full table (``classes``: a cell classifier's), so concatenating an
    empty shard changes no column's dtype."""
    cols = {
        "cell_id": object,
        "obs_index": np.int64,
        "perturbed_ids": object,
        "perturbed_symbols": object,
        "perturb_type": object,
        "n_genes": np.int32,
        "cos_sim": np.float32,
        "cell_cos_sim": np.float32,
    }
    cols |= {f"shift_{s}": np.float32 for s in (states.targets if states else ())}
    cols |= {f"{pre}{c}": np.float32 for pre in ("prob_", "delta_prob_") for c in classes or ()}
    cols |= {c: object for c in ("pred_class", "orig_pred_class") if classes}
    return pd.DataFrame({c: np.array([], dtype=t) for c, t in cols.items()})


def shard_tables(
    p: Perturber, adata, cells, shard: Shard, res: dict, states, id_of_token, vocab: Vocab
) -> dict[str, pd.DataFrame]:
    """Output tables of one shard; rows sorted by input cell, then perturbation order."""
    chunks = res["chunks"]
    cell_rows = np.concatenate([np.full(b - a, c) for c, a, b in chunks])
    pos = np.array([shard.cells[c] for c in cell_rows])
    obs_index = cells.obs_index[pos]
    within = np.concatenate([np.arange(a, b) for _, a, b in chunks])
    labels = torch.cat([shard.specs[c].perturbed[a:b] for c, a, b in chunks]).cpu().numpy()
    ids = id_of_token[labels]
    df = pd.DataFrame(
        {
            "cell_id": adata.obs_names.to_numpy()[obs_index].astype(str),
            "obs_index": obs_index.astype(np.int64),
            "perturbed_ids": ["+".join(r) for r in ids],
            "perturbed_symbols": ["+".join(vocab.symbol(g) for g in r) for r in ids],
            "perturb_type": p.kind,
            "n_genes": (cells.lengths[pos] - 2 * int(p.has_cls)).astype(np.int32),
            "cos_sim": torch.cat(res["cos_sim"]).cpu().numpy().astype(np.float32),
            "cell_cos_sim": torch.cat(res["cell_cos_sim"]).cpu().numpy().astype(np.float32),
        }
    )
    if states is not None:
        shifts = torch.cat(res["shifts"]).cpu().numpy()
        for j, st in enumerate(states.targets):
            df[f"shift_{st}"] = shifts[:, j].astype(np.float32)
    if "probs" in res:  # a cell classifier's probabilities, after and before
        orig = shard.orig_probs[torch.as_tensor(cell_rows, device=shard.orig_probs.device)]
        probs = torch.cat(res["probs"]).cpu().numpy()
        cols = p.model.classifier.perturb_columns(probs, orig.cpu().numpy())
        df = pd.concat([df, pd.DataFrame(cols)], axis=1)
    perm = np.lexsort((within, obs_index))  # batch order -> input order
    out = {"cells": df.iloc[perm].reset_index(drop=True)}
    if "gene_cos" in res:
        out["genes"] = gene_rows(
            p, cells, shard, res["gene_cos"], chunks, df, perm, id_of_token, vocab
        )
    return out


def gene_rows(
    p: Perturber,
    cells,
    shard: Shard,
    gene_cos: list[torch.Tensor],
    chunks,
    df: pd.DataFrame,
    perm: np.ndarray,
    id_of_token,
    vocab: Vocab,
) -> pd.DataFrame:
    """One row per (cell, perturbation, affected gene), in the cell table's row order."""
    s = int(p.has_cls)
    rows = [r for t in gene_cos for r in t.split(1)]  # batch rows, each (1, k of its batch)
    row_of, tokens, cos = [], [], []
    start = 0
    for c, a, b in chunks:
        spec = shard.specs[c]
        k = spec.aff_orig.shape[1]
        cell = cells.cell(shard.cells[c])[s:]
        tokens.append(cell[spec.aff_orig[a:b].cpu().numpy()].ravel())
        cos.append(torch.cat(rows[start : start + b - a])[:, :k].cpu().numpy().ravel())
        row_of.append(np.repeat(np.arange(start, start + b - a), k))
        start += b - a
    row_of = np.concatenate(row_of)
    rank = np.empty_like(perm)
    rank[perm] = np.arange(len(perm))
    order = np.argsort(rank[row_of], kind="stable")
    row_of = row_of[order]
    aff_ids = id_of_token[np.concatenate(tokens)[order]]
    return pd.DataFrame(
        {
            "cell_id": df["cell_id"].to_numpy()[row_of],
            "obs_index": df["obs_index"].to_numpy()[row_of],
            "perturbed_ids": df["perturbed_ids"].to_numpy()[row_of],
            "affected_id": aff_ids,
            "affected_symbol": [vocab.symbol(g) for g in aff_ids],
            "cos_sim": np.concatenate(cos)[order].astype(np.float32),
        }
    )
