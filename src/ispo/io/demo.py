"""Built-in synthetic data: a sci-Plex2-like AnnData and a matching vocabulary.

So that ispo runs on a fresh machine with nothing else. Everything here is SYNTHETIC and says so
(``uns["synthetic"]``, ``vocab.source == "demo"``): counts are negative-binomial draws with five
condition programs (Dex, Nutlin, SAHA, BMS, control), about 2,000 of ~25k genes expressed per
cell. The vocabulary has the V1 (or V2) layout and size so the published presets accept it.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ispo.io.vocab import CLS, EOS, MASK, PAD, Vocab

CONDITIONS = ("Dex", "Nutlin", "SAHA", "BMS", "control")
VOCAB_SIZES = {1: 25_426, 2: 20_275}


def demo_gene_ids(version: int = 1) -> list[str]:
    n_special = 2 if version == 1 else 4
    return [f"ENSGSYN{i:08d}" for i in range(VOCAB_SIZES[version] - n_special)]


def demo_vocab(version: int = 1, seed: int = 0) -> Vocab:
    """A synthetic Geneformer vocabulary (V1: <pad>, <mask>; V2 adds <cls>, <eos>)."""
    rng = np.random.default_rng(seed)
    specials = [PAD, MASK] + ([CLS, EOS] if version == 2 else [])
    genes = demo_gene_ids(version)
    token_dict = {t: i for i, t in enumerate(specials)}
    token_dict.update({g: i + len(specials) for i, g in enumerate(genes)})
    medians = rng.lognormal(mean=0.5, sigma=0.6, size=len(genes))
    name_id = {f"SYN{i}": g for i, g in enumerate(genes)}
    mapping = {g: g for g in genes} | {s.upper(): g for s, g in name_id.items()}
    return Vocab(token_dict, dict(zip(genes, medians.tolist())), name_id, mapping, source="demo")


def demo_adata(
    n_cells: int = 1000, *, version: int = 1, seed: int = 0, n_program_genes: int = 150
) -> ad.AnnData:
    """Synthetic raw counts (float32 CSR, integer-valued) with ``obs["condition"]`` labels."""
    rng = np.random.default_rng(seed)
    genes = demo_gene_ids(version)
    n_genes = len(genes)
    base = np.exp(rng.normal(-3.8, 2.0, size=n_genes))  # most genes rarely seen, some abundant
    programs = {c: rng.choice(n_genes, n_program_genes, replace=False) for c in CONDITIONS[:-1]}
    labels = np.array(CONDITIONS)[np.arange(n_cells) % len(CONDITIONS)]
    rng.shuffle(labels)
    size = rng.lognormal(0.0, 0.3, size=n_cells)
    dispersion = 2.0
    blocks = []
    for start in range(0, n_cells, 256):
        stop = min(start + 256, n_cells)
        mu = np.outer(size[start:stop], base)
        for j, cond in enumerate(labels[start:stop]):
            if cond in programs:
                mu[j, programs[cond]] *= 6.0
        counts = rng.poisson(rng.gamma(dispersion, mu / dispersion)).astype(np.float32)
        blocks.append(sp.csr_matrix(counts))
    X = sp.vstack(blocks).tocsr()
    obs = pd.DataFrame(
        {"condition": pd.Categorical(labels, categories=CONDITIONS)},
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"ensembl_id": genes}, index=[f"SYN{i}" for i in range(n_genes)])
    return ad.AnnData(
        X=X,
        obs=obs,
        var=var,
        uns={"synthetic": "ispo demo data: negative-binomial counts, not biology"},
    )
