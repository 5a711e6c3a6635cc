"""Test helpers shared by the test modules: tiny vocabularies, AnnData and checkpoints.

Imported as ``from support import ...``: a plain module, so no test depends on which
conftest.py Python imported first.
"""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ispo.io.vocab import CLS, EOS, MASK, PAD, Vocab

# ``../shared/data`` beside the checkout; ISPO_SHARED_DATA points elsewhere (a git worktree)
SHARED = Path(
    os.environ.get("ISPO_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

N_VOCAB_GENES = 120
TIED_MEDIAN = 1.5  # several genes share this median, so equal counts tie exactly
TIED_GENES = (2, 9, 30, 31, 44, 88)  # gene indices (1-based, as in gene_id) with that median


def shared_path(name: str) -> Path:
    """A file or directory under the shared data folder, or skip the test when it is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"shared data {name} not available at {path}")
    return path


def gene_id(i: int) -> str:
    return f"ENSG{i:011d}"


def gene_symbol(i: int) -> str:
    return f"GENE{i}"


# Genes with these indices are aliases (other ids) of a canonical gene: alias -> canonical index.
ALIAS_IDS = {"ENSG90000000001": 5, "ENSG90000000002": 17}
# Genes in the token dictionary but without a median: never tokenized.
NO_MEDIAN = (7, 60)


def make_vocab(version: int = 1, seed: int = 0) -> Vocab:
    """A tiny Geneformer-like vocabulary.

    Token ids are a permutation of the gene order (so tie-breaking by token id differs from
    breaking by var order); a handful of genes share one median (ties); two alias ids map to a
    canonical gene through ``mapping_dict``; two genes have no median.
    """
    rng = np.random.default_rng(seed)
    specials = [PAD, MASK] + ([CLS, EOS] if version == 2 else [])
    n_special = len(specials)
    genes = [gene_id(i) for i in range(1, N_VOCAB_GENES + 1)]
    perm = rng.permutation(len(genes))
    token_dict = {t: i for i, t in enumerate(specials)}
    token_dict.update({g: n_special + int(p) for g, p in zip(genes, perm)})
    medians = rng.lognormal(mean=0.3, sigma=0.7, size=len(genes))
    medians[[i - 1 for i in TIED_GENES]] = TIED_MEDIAN
    median_dict = {g: float(m) for g, m in zip(genes, medians)}
    for i in NO_MEDIAN:
        del median_dict[gene_id(i)]
    name_id = {gene_symbol(i): gene_id(i) for i in range(1, N_VOCAB_GENES + 1)}
    mapping = {g: g for g in genes}
    mapping.update({s.upper(): g for s, g in name_id.items()})
    mapping.update({alias: gene_id(i) for alias, i in ALIAS_IDS.items()})
    return Vocab(
        token_dict=token_dict,
        median_dict=median_dict,
        name_id_dict=name_id,
        mapping_dict=mapping,
        source=f"test-v{version}",
    )


def make_adata(
    n_cells: int = 40,
    *,
    seed: int = 0,
    n_genes: int = N_VOCAB_GENES,
    n_foreign: int = 6,
    density: float = 0.4,
    aliases: bool = False,
    ensembl_column: bool = True,
) -> ad.AnnData:
    """Integer counts (float32 CSR) over the first ``n_genes`` vocabulary genes.

    ``n_foreign`` extra genes are not in any vocabulary (they still count in ``n_counts``).
    ``aliases=True`` appends the alias ids of ``ALIAS_IDS`` as extra var rows (duplicates of
    canonical genes, whose counts must be summed). ``var["ensembl_id"]`` holds the ids and
    ``var_names`` the symbols (unless ``ensembl_column=False``, then only symbols are given).
    Some counts are set equal on the genes sharing ``TIED_MEDIAN`` so ranking ties occur.
    """
    rng = np.random.default_rng(seed)
    ids = [gene_id(i) for i in range(1, n_genes + 1)]
    symbols = [gene_symbol(i) for i in range(1, n_genes + 1)]
    ids += [f"ENSG8{i:010d}" for i in range(n_foreign)]
    symbols += [f"FOREIGN{i}" for i in range(n_foreign)]
    if aliases:
        ids += list(ALIAS_IDS)
        symbols += [f"ALIAS{i}" for i in range(len(ALIAS_IDS))]
    n_var = len(ids)
    counts = rng.negative_binomial(2, 0.35, size=(n_cells, n_var)).astype(np.float32)
    counts *= rng.random((n_cells, n_var)) < density
    # exact ties: genes 2, 9, 30, 31 share a median, give them the same count in most cells
    tied_cols = [i - 1 for i in (2, 9, 30, 31) if i <= n_genes]
    counts[::2, tied_cols] = 3.0
    X = sp.csr_matrix(counts)
    X.eliminate_zeros()
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=pd.Index(symbols))
    if ensembl_column:
        var["ensembl_id"] = ids
    return ad.AnnData(X=X, obs=obs, var=var)


def save_tiny_checkpoint(
    path: Path,
    vocab_size: int,
    *,
    n_layers: int = 3,
    max_len: int = 2048,
    seed: int = 0,
    safe_serialization: bool = True,
    hidden_act: str = "relu",
    hidden: int = 32,
) -> Path:
    """A seeded random ``BertForMaskedLM`` saved as a Hugging Face checkpoint directory.

    ``initializer_range`` is larger than BERT's so that hidden states depend clearly on the input
    (a sloppy mask or pooling would show), while staying well conditioned. ``hidden_act`` is
    written to config.json as Hugging Face reads it (a GELU checkpoint must run as GELU).
    """
    import torch
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_len,
        hidden_act=hidden_act,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).eval()
    if safe_serialization:
        model.save_pretrained(path)
    else:
        # legacy layout (transformers >= 5 no longer writes it): config.json + pytorch_model.bin
        Path(path).mkdir(parents=True, exist_ok=True)
        model.config.save_pretrained(path)
        torch.save(model.state_dict(), Path(path) / "pytorch_model.bin")
    return path


#: class names of the tiny fine-tuned checkpoints (id order)
CLASSES = ("ctrl", "stim", "other")
#: the fine-tuned layouts ``ispo`` loads: transformers' two classifiers and Geneformer's
#: multi-task model (``bert.*`` + ``classification_heads.<i>.*`` in ``pytorch_model.bin``)
FINETUNED = ("sequence", "token", "multitask")


def save_finetuned_checkpoint(
    path: Path,
    vocab_size: int,
    layout: str,
    *,
    n_layers: int = 3,
    hidden: int = 32,
    max_len: int = 2048,
    seed: int = 0,
) -> Path:
    """A seeded random fine-tuned checkpoint of ``layout`` (:data:`FINETUNED`), saved as its
    trainer saves it: ``save_pretrained`` of ``BertForSequenceClassification`` /
    ``BertForTokenClassification`` with ``CLASSES`` in ``id2label``, or, for Geneformer's
    multi-task model, its module's ``state_dict()`` in ``pytorch_model.bin`` beside the config."""
    import torch
    from torch import nn
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
    )

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_len,
        hidden_act="relu",
        pad_token_id=0,
        initializer_range=0.2,
        id2label=dict(enumerate(CLASSES)),
        label2id={c: i for i, c in enumerate(CLASSES)},
    )
    torch.manual_seed(seed)
    if layout == "sequence":
        BertForSequenceClassification(config).eval().save_pretrained(path)
    elif layout == "token":
        BertForTokenClassification(config).eval().save_pretrained(path)
    elif layout == "multitask":  # GeneformerMultiTask's module names, two tasks

        class MultiTask(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.bert = BertModel(config)
                heads = [nn.Linear(hidden, 3), nn.Linear(hidden, 5)]
                self.classification_heads = nn.ModuleList(heads)

        Path(path).mkdir(parents=True, exist_ok=True)
        config.save_pretrained(path)
        torch.save(MultiTask().state_dict(), Path(path) / "pytorch_model.bin")
    else:
        raise ValueError(f"unknown layout {layout!r}")
    return path


def cpu_has_bf16_units() -> bool:
    """Whether this machine's ``/proc/cpuinfo`` lists AMX-BF16 or AVX512-BF16: the expected
    answer of ``precision="auto"`` on CPU, read here without ispo (False off Linux)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(words & {"amx_bf16", "avx512_bf16"})
