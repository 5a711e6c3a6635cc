"""Rank-value tokenization against a plain per-cell Python reference written from the facts doc.

The reference (``reference_tokenize``) does what Geneformer does, one cell at a time and with no
vectorisation: resolve ids, canonicalise them through the mapping dictionary, sum duplicates,
value = count / n_counts * 10_000 / median, sort highest first, truncate, wrap V2 cells in
``<cls>``/``<eos>``. ispo's output is compared with it up to the order of tied values (Geneformer's
sort is unstable); ispo's own tie rule (token id ascending) is asserted on a constructed tie.
"""

from __future__ import annotations

import importlib
import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from ispo.errors import IspoError
from ispo.io.vocab import Vocab, load_vocab
from ispo.tokens import tokenize
from support import ALIAS_IDS, TIED_MEDIAN, gene_id, make_adata, shared_path


# --------------------------------------------------------------------------- the reference
def reference_gene_ids(var: pd.DataFrame, vocab: Vocab) -> list[str | None]:
    """Ensembl id per var row: var['ensembl_id'], else Ensembl var_names, else mapped symbols."""
    if "ensembl_id" in var.columns:
        return [str(x) for x in var["ensembl_id"]]
    names = [str(x) for x in var.index]
    if names and sum(n.upper().startswith("ENS") for n in names) > len(names) / 2:
        return [n.split(".")[0] for n in names]
    return [vocab.name_id_dict.get(n) for n in names]


def reference_cell_values(
    counts_row: np.ndarray, n_counts: float, ids: list[str | None], vocab: Vocab
) -> dict[int, float]:
    """token -> value for every expressed vocabulary gene of one cell (duplicates summed)."""
    summed: dict[str, float] = {}
    for j in np.flatnonzero(counts_row):
        raw, c = ids[j], counts_row[j]
        if raw is None:
            continue
        canon = vocab.mapping_dict.get(raw.upper())
        if canon is None or canon not in vocab.token_dict or canon not in vocab.median_dict:
            continue
        summed[canon] = summed.get(canon, 0.0) + float(c)
    return {
        vocab.token_dict[g]: c / n_counts * 10_000 / vocab.median_dict[g]
        for g, c in summed.items()
        if c != 0
    }


def reference_tokenize(
    adata: ad.AnnData,
    vocab: Vocab,
    *,
    layer: str | None = None,
    max_input: int | None = None,
    rows: range | None = None,
) -> tuple[list[int], list[list[int]], list[dict[int, float]]]:
    """(obs rows kept, token lists, full token->value maps) cell by cell.

    Ties are broken by token id ascending so the reference is deterministic; comparisons with
    ispo still only rely on this where a test says so.
    """
    mat = adata.layers[layer] if layer else adata.X
    mat = mat.toarray() if sp.issparse(mat) else np.asarray(mat)
    ids = reference_gene_ids(adata.var, vocab)
    v2 = vocab.version == 2
    max_input = max_input or (4096 if v2 else 2048)
    max_genes = max_input - 2 if v2 else max_input
    kept, lists, values = [], [], []
    for i in rows if rows is not None else range(adata.n_obs):
        if "filter_pass" in adata.obs.columns and not adata.obs["filter_pass"].iloc[i]:
            continue
        row = mat[i].astype(np.float64)
        if "n_counts" in adata.obs.columns:
            n = float(adata.obs["n_counts"].iloc[i])
        else:
            n = float(row.sum())  # all genes, before any is dropped
        vals = reference_cell_values(row, n, ids, vocab)
        if not vals:
            continue
        ranked = sorted(vals, key=lambda t: (-vals[t], t))[:max_genes]
        if v2:
            ranked = [vocab.cls_id, *ranked, vocab.eos_id]
        kept.append(i)
        lists.append(ranked)
        values.append(vals)
    return kept, lists, values


def assert_same_up_to_ties(
    got: list[int], want: list[int], vals: dict[int, float], vocab: Vocab, where: str = ""
) -> None:
    """``got`` is a valid ranking of the cell: same value sequence as ``want`` (exactly), no
    repeated token, and each tie group drawn from the genes that carry that value (a tie group
    cut by truncation may hold any of them)."""
    if vocab.version == 2:
        assert got[0] == vocab.cls_id and got[-1] == vocab.eos_id, where
        assert want[0] == vocab.cls_id and want[-1] == vocab.eos_id
        got, want = got[1:-1], want[1:-1]
    assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
    assert len(set(got)) == len(got), f"{where}: a token repeats"
    missing = [t for t in got if t not in vals]
    assert not missing, f"{where}: tokens {missing[:5]} are not expressed vocabulary genes"
    got_vals = [vals[t] for t in got]
    want_vals = [vals[t] for t in want]
    assert got_vals == want_vals, f"{where}: value sequences differ"
    by_value: dict[float, set[int]] = {}
    for t, v in vals.items():
        by_value.setdefault(v, set()).add(t)
    got_groups: dict[float, set[int]] = {}
    for t in got:
        got_groups.setdefault(vals[t], set()).add(t)
    for v, group in got_groups.items():
        if v != got_vals[-1]:  # a group not cut by truncation holds exactly the tied genes
            assert group == by_value[v], f"{where}: tie group of value {v} differs"
        else:
            assert group <= by_value[v], where


def check_against_reference(cells, adata, vocab, **kwargs) -> None:
    kept, lists, values = reference_tokenize(adata, vocab, **kwargs)
    assert cells.obs_index.tolist() == kept
    assert cells.has_cls == (vocab.version == 2)
    got = cells.to_lists()
    assert len(got) == len(lists)
    for i, (g, w, v) in enumerate(zip(got, lists, values)):
        assert_same_up_to_ties(g, w, v, vocab, where=f"cell {kept[i]}")


# --------------------------------------------------------------------------- synthetic data
def test_matches_reference(vocab):
    adata = make_adata(60, seed=1)
    cells = tokenize(adata, vocab)
    check_against_reference(cells, adata, vocab)
    assert cells.tokens.dtype == np.int32
    assert cells.offsets[0] == 0 and cells.offsets[-1] == len(cells.tokens)
    assert (cells.lengths == [len(x) for x in cells.to_lists()]).all()


def test_cells_are_indexed_like_a_list(vocab_v1):
    """``ispo.tokenize(...)[0]`` is the first cell's token ids (issue 25: "not subscriptable");
    slices and index lists give those cells; iteration goes cell by cell."""
    adata = make_adata(8, seed=3)
    cells = tokenize(adata, vocab_v1)
    lists = cells.to_lists()  # the oracle: offsets read one by one
    assert cells[0].tolist() == lists[0] and cells[-1].tolist() == lists[-1]
    assert cells[2:5].to_lists() == lists[2:5]
    picked = cells[[4, 1]]
    assert picked.to_lists() == [lists[4], lists[1]]
    assert picked.obs_index.tolist() == [cells.obs_index[4], cells.obs_index[1]]
    assert [c.tolist() for c in cells] == lists
    with pytest.raises(IndexError, match="out of range"):
        cells[len(cells)]


def test_v1_and_v2_rules(vocab_v1, vocab_v2):
    adata = make_adata(10, seed=2)
    c1, c2 = tokenize(adata, vocab_v1), tokenize(adata, vocab_v2)
    assert not c1.has_cls and c2.has_cls
    specials_v1 = {0, 1}
    inv1, inv2 = vocab_v1.id_of_token(), vocab_v2.id_of_token()
    for i in range(len(c1)):
        assert not specials_v1 & set(c1.cell(i).tolist())
        cell = c2.cell(i).tolist()
        assert cell[0] == vocab_v2.cls_id == 2 and cell[-1] == vocab_v2.eos_id == 3
        assert not {0, 1, 2, 3} & set(cell[1:-1])
        # same genes in the same order, in each vocabulary's own tokens
        assert [inv1[t] for t in c1.cell(i)] == [inv2[t] for t in cell[1:-1]]


def test_exact_tie_break_by_token_id(vocab):
    """Genes with the same median and count tie exactly: ispo orders them by token id."""
    tied = [gene_id(i) for i in (2, 9, 30, 31, 44, 88)]
    assert all(vocab.median_dict[g] == TIED_MEDIAN for g in tied)
    other = gene_id(3)
    X = sp.csr_matrix(np.array([[4, 4, 4, 4, 4, 4, 50]], dtype=np.float32))
    adata = ad.AnnData(
        X=X, var=pd.DataFrame({"ensembl_id": tied + [other]}, index=[f"g{i}" for i in range(7)])
    )
    got = tokenize(adata, vocab).cell(0).tolist()
    if vocab.version == 2:
        got = got[1:-1]
    assert got[0] == vocab.token_dict[other]
    tied_tokens = sorted(vocab.token_dict[g] for g in tied)
    # token ids are a permutation of var order, so this is not simply the input order
    assert tied_tokens != [vocab.token_dict[g] for g in tied]
    assert got[1:] == tied_tokens
    # and in general: ispo equals the reference with the same (value desc, token asc) rule
    adata = make_adata(30, seed=3)
    _, lists, _ = reference_tokenize(adata, vocab)
    assert tokenize(adata, vocab).to_lists() == lists


def test_values_closer_than_the_sort_key_are_ordered_exactly(vocab_v1):
    """The ranking sorts truncated 32-bit keys: values that differ only beyond the truncation
    (here by ~1e-13) collide there and must still come out by value, not by token id."""
    genes = sorted(
        (g for g in vocab_v1.median_dict if vocab_v1.median_dict[g] != TIED_MEDIAN),
        key=lambda g: -vocab_v1.token_dict[g],
    )[:8]  # descending token ids: a token-id order would be the reverse of the value order
    medians = dict(vocab_v1.median_dict)
    for k, g in enumerate(genes):
        medians[g] = 2.0 * (1 + k * 2.0**-43)  # value order: k ascending
    near = Vocab(
        vocab_v1.token_dict, medians, vocab_v1.name_id_dict, vocab_v1.mapping_dict, source="near"
    )
    X = sp.csr_matrix(np.full((3, len(genes)), 3, dtype=np.float32))
    adata = ad.AnnData(X=X, var=pd.DataFrame({"ensembl_id": genes}, index=genes))
    got = tokenize(adata, near).cell(0).tolist()
    assert got == [near.token_dict[g] for g in genes]
    _, lists, _ = reference_tokenize(adata, near)
    assert tokenize(adata, near).to_lists() == lists


@pytest.mark.parametrize("max_input", [1, 5, 17])
def test_truncation(vocab, max_input):
    if vocab.version == 2 and max_input < 3:
        max_input = 3  # <cls> + one gene + <eos>
    adata = make_adata(30, seed=4)
    cells = tokenize(adata, vocab, max_input=max_input)
    assert cells.lengths.max() == max_input
    check_against_reference(cells, adata, vocab, max_input=max_input)
    full = tokenize(adata, vocab)
    extra = 2 if vocab.version == 2 else 0
    for i in range(len(cells)):
        n_genes = len(cells.cell(i)) - extra
        assert n_genes == min(len(full.cell(i)) - extra, max_input - extra)


def test_default_truncation_sizes(vocab_v1, vocab_v2):
    """V1 keeps 2048 genes; V2 keeps 4094 genes plus <cls> and <eos> (4096)."""
    rng = np.random.default_rng(5)
    n = 4200
    ids = [f"ENSG7{i:010d}" for i in range(n)]
    for vocab, total in ((vocab_v1, 2048), (vocab_v2, 4096)):
        n_special = 4 if vocab.version == 2 else 2
        token_dict = {k: v for k, v in vocab.token_dict.items() if v < n_special}
        token_dict.update({g: n_special + i for i, g in enumerate(ids)})
        big = Vocab(
            token_dict=token_dict,
            median_dict={g: float(m) for g, m in zip(ids, rng.uniform(0.5, 2, n))},
            name_id_dict={},
            mapping_dict={g: g for g in ids},
            source="big",
        )
        X = sp.csr_matrix(rng.integers(1, 20, size=(2, n)).astype(np.float32))
        adata = ad.AnnData(
            X=X, var=pd.DataFrame({"ensembl_id": ids}, index=[f"s{i}" for i in range(n)])
        )
        cells = tokenize(adata, big)
        assert cells.lengths.tolist() == [total, total]
        check_against_reference(cells, adata, big)


def test_duplicate_genes_are_summed(vocab):
    adata = make_adata(40, seed=6, aliases=True)
    alias_cols = [adata.var_names.get_loc(f"ALIAS{i}") for i in range(len(ALIAS_IDS))]
    assert adata.X[:, alias_cols].nnz > 0
    cells = tokenize(adata, vocab)
    check_against_reference(cells, adata, vocab)
    # the same as one gene holding the summed counts
    X = adata.X.toarray()
    merged = X[:, : -len(ALIAS_IDS)].copy()
    for alias, col in zip(ALIAS_IDS.values(), alias_cols):
        merged[:, alias - 1] += X[:, col]
    # keep n_counts the same (aliases' counts are part of the total either way)
    one = ad.AnnData(
        X=sp.csr_matrix(merged),
        obs=pd.DataFrame({"n_counts": X.sum(1)}, index=adata.obs_names),
        var=adata.var.iloc[: -len(ALIAS_IDS)],
    )
    assert cells.to_lists() == tokenize(one, vocab).to_lists()
    # a gene appears once per cell even though two var rows map to it
    canon_tok = vocab.token_dict[gene_id(5)]
    for i in range(len(cells)):
        assert cells.cell(i).tolist().count(canon_tok) <= 1


def test_duplicate_only_in_alias_row(vocab):
    """A cell whose only count for a gene is in the alias row still gets that gene."""
    var = pd.DataFrame(
        {"ensembl_id": [gene_id(5), "ENSG90000000001", gene_id(3)]}, index=["a", "b", "c"]
    )
    X = sp.csr_matrix(np.array([[0, 7, 1], [2, 3, 1]], dtype=np.float32))
    adata = ad.AnnData(X=X, var=var)
    cells = tokenize(adata, vocab)
    check_against_reference(cells, adata, vocab)
    tok5 = vocab.token_dict[gene_id(5)]
    extra = 1 if vocab.version == 2 else 0
    assert cells.cell(0).tolist()[extra] == tok5
    assert cells.cell(1).tolist()[extra] == tok5


def test_non_canonical_csr(vocab):
    """A CSR matrix may store one (cell, gene) count as several entries (scipy allows it; the
    count is their sum, as ``toarray()`` shows). The gene must still appear once, with the sum."""
    var = pd.DataFrame({"ensembl_id": [gene_id(1), gene_id(3), gene_id(4)]}, index=list("abc"))
    X = sp.csr_matrix(
        (np.array([1, 5, 4, 3], np.float32), np.array([0, 0, 1, 2]), np.array([0, 4])), shape=(1, 3)
    )
    assert not X.has_canonical_format
    cells = tokenize(ad.AnnData(X=X, var=var), vocab)
    canonical = ad.AnnData(X=sp.csr_matrix(X.toarray()), var=var)
    check_against_reference(cells, canonical, vocab)
    assert cells.to_lists() == tokenize(canonical, vocab).to_lists()


@pytest.mark.parametrize("dtype", ["int", "bool"])
def test_filter_pass(vocab, dtype):
    adata = make_adata(30, seed=7)
    passing = np.arange(30) % 3 != 1
    adata.obs["filter_pass"] = passing.astype(int) if dtype == "int" else passing
    cells = tokenize(adata, vocab)
    assert cells.obs_index.tolist() == np.flatnonzero(passing).tolist()
    check_against_reference(cells, adata, vocab)


def _spy_n_counts(monkeypatch):
    # ``ispo.tokenize`` the attribute may be the function re-exported by the package
    tk = importlib.import_module("ispo.tokens")
    seen: list[np.ndarray] = []
    real = tk.rank_value_encode

    def spy(counts, n_counts, *args, **kwargs):
        seen.append(np.asarray(n_counts, dtype=np.float64).copy())
        return real(counts, n_counts, *args, **kwargs)

    monkeypatch.setattr(tk, "rank_value_encode", spy)
    return seen


def test_n_counts_from_obs(vocab, monkeypatch):
    adata = make_adata(20, seed=8)
    given = np.asarray(adata.X.sum(1)).ravel() * 3.0 + 17.0
    adata.obs["n_counts"] = given
    seen = _spy_n_counts(monkeypatch)
    cells = tokenize(adata, vocab, chunk_size=7)
    np.testing.assert_array_equal(np.concatenate(seen), given)
    check_against_reference(cells, adata, vocab)


def test_n_counts_computed_from_all_genes(vocab, monkeypatch):
    """Without obs['n_counts'] the total includes genes outside the vocabulary."""
    adata = make_adata(20, seed=9, n_foreign=10, aliases=True)
    X = adata.X.toarray().astype(np.float64)
    foreign = np.array([n.startswith("FOREIGN") for n in adata.var_names])
    assert X[:, foreign].sum() > 0
    seen = _spy_n_counts(monkeypatch)
    cells = tokenize(adata, vocab)
    np.testing.assert_allclose(np.concatenate(seen), X.sum(1), rtol=0, atol=1e-9)
    check_against_reference(cells, adata, vocab)


def test_n_counts_only_changes_values_not_set(vocab):
    """Rescaling n_counts of every cell leaves the ranking unchanged (values scale together)."""
    adata = make_adata(20, seed=10)
    base = tokenize(adata, vocab).to_lists()
    adata.obs["n_counts"] = np.asarray(adata.X.sum(1)).ravel() * 2
    assert tokenize(adata, vocab).to_lists() == base


def test_symbols_in_var_names(vocab):
    adata = make_adata(25, seed=11, ensembl_column=False)
    assert "ensembl_id" not in adata.var.columns
    cells = tokenize(adata, vocab)
    check_against_reference(cells, adata, vocab)
    with_ids = make_adata(25, seed=11)
    assert cells.to_lists() == tokenize(with_ids, vocab).to_lists()


@pytest.mark.parametrize("versioned", [False, True])
def test_ensembl_ids_in_var_names(vocab, versioned):
    ref = make_adata(25, seed=12)
    names = list(ref.var["ensembl_id"])
    if versioned:
        names = [f"{n}.{k % 9 + 1}" for k, n in enumerate(names)]
    adata = ad.AnnData(X=ref.X.copy(), obs=ref.obs.copy(), var=pd.DataFrame(index=names))
    cells = tokenize(adata, vocab)
    check_against_reference(cells, adata, vocab)
    assert cells.to_lists() == tokenize(ref, vocab).to_lists()


def test_lowercase_ids_are_upper_cased(vocab):
    ref = make_adata(10, seed=13)
    adata = ref.copy()
    adata.var["ensembl_id"] = [s.lower() for s in adata.var["ensembl_id"]]
    assert tokenize(adata, vocab).to_lists() == tokenize(ref, vocab).to_lists()


def test_gene_key(vocab):
    ref = make_adata(10, seed=14)
    adata = ref.copy()
    adata.var["my_ids"] = adata.var["ensembl_id"]
    adata.var["ensembl_id"] = "junk"
    assert tokenize(adata, vocab, gene_key="my_ids").to_lists() == tokenize(ref, vocab).to_lists()


def test_layer(vocab):
    adata = make_adata(25, seed=15)
    counts = adata.X.copy()
    adata.layers["counts"] = counts
    lib = np.asarray(counts.sum(1)).ravel()
    adata.X = sp.csr_matrix(np.log1p(counts.toarray() / lib[:, None] * 1e4).astype(np.float32))
    cells = tokenize(adata, vocab, layer="counts")
    check_against_reference(cells, adata, vocab, layer="counts")
    assert cells.to_lists() == tokenize(ad.AnnData(X=counts, var=adata.var), vocab).to_lists()
    with pytest.raises(IspoError, match=r"non-integer values .*give raw integer counts"):
        tokenize(adata, vocab)  # X is log-normalised, not counts


def test_chunking(vocab):
    adata = make_adata(50, seed=16, aliases=True)
    adata.obs["filter_pass"] = (np.arange(50) % 7 != 3).astype(int)
    X = adata.X.toarray()
    X[5] = 0  # one empty cell inside a chunk
    adata.X = sp.csr_matrix(X)
    big = tokenize(adata, vocab, chunk_size=4096)
    small = tokenize(adata, vocab, chunk_size=3)
    one = tokenize(adata, vocab, chunk_size=1)
    for other in (small, one):
        np.testing.assert_array_equal(other.tokens, big.tokens)
        np.testing.assert_array_equal(other.offsets, big.offsets)
        np.testing.assert_array_equal(other.obs_index, big.obs_index)
    check_against_reference(big, adata, vocab)


def test_dense_x(vocab):
    adata = make_adata(25, seed=17)
    dense = ad.AnnData(X=adata.X.toarray(), obs=adata.obs, var=adata.var)
    assert isinstance(dense.X, np.ndarray)
    cells = tokenize(dense, vocab)
    assert cells.to_lists() == tokenize(adata, vocab).to_lists()
    check_against_reference(cells, dense, vocab)


def test_integer_dtype_counts(vocab):
    adata = make_adata(15, seed=18)
    as_int = ad.AnnData(
        X=sp.csr_matrix(adata.X.toarray().astype(np.int32)), obs=adata.obs, var=adata.var
    )
    assert tokenize(as_int, vocab).to_lists() == tokenize(adata, vocab).to_lists()


def test_backed_h5ad(vocab, tmp_path):
    adata = make_adata(30, seed=19, aliases=True)
    adata.obs["filter_pass"] = (np.arange(30) % 5 != 0).astype(int)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        cells = tokenize(backed, vocab, chunk_size=8)
        in_memory = tokenize(adata, vocab)
        np.testing.assert_array_equal(cells.tokens, in_memory.tokens)
        np.testing.assert_array_equal(cells.obs_index, in_memory.obs_index)
    finally:
        backed.file.close()
    check_against_reference(cells, adata, vocab)


def test_empty_cells_skipped_with_warning(vocab, caplog):
    adata = make_adata(12, seed=20)
    X = adata.X.toarray()
    X[3] = 0  # no counts at all
    X[7] = 0
    foreign = [j for j, n in enumerate(adata.var_names) if n.startswith("FOREIGN")]
    X[7, foreign] = 5  # counts, but only outside the vocabulary
    adata.X = sp.csr_matrix(X)
    with caplog.at_level(logging.WARNING, logger="ispo"):
        cells = tokenize(adata, vocab)
    assert 3 not in cells.obs_index and 7 not in cells.obs_index
    assert cells.obs_index.tolist() == [i for i in range(12) if i not in (3, 7)]
    assert any(r.levelno == logging.WARNING and "2" in r.getMessage() for r in caplog.records)
    check_against_reference(cells, adata, vocab)


def test_all_empty_raises(vocab):
    adata = make_adata(5, seed=21)
    adata.X = sp.csr_matrix(adata.shape, dtype=np.float32)
    with pytest.raises(
        IspoError, match=r"no cell has counts in vocabulary genes .*check the counts"
    ) as err:
        tokenize(adata, vocab)
    assert "\n" not in str(err.value)
    adata = make_adata(5, seed=21)
    adata.obs["filter_pass"] = 0
    with pytest.raises(IspoError, match=r"no cell has counts .*obs\[.filter_pass.\]"):
        tokenize(adata, vocab)


def test_chunk_size_above_4096(vocab_v1):
    """chunk_size is a public knob with no documented limit: a chunk of more than 4096 cells
    must tokenize like smaller chunks (not crash in the ranking's bit packing)."""
    adata = make_adata(4200, seed=22, n_genes=20, n_foreign=0, density=0.3)
    big = tokenize(adata, vocab_v1, chunk_size=5000)
    ref = tokenize(adata, vocab_v1, chunk_size=4096)
    np.testing.assert_array_equal(big.tokens, ref.tokens)
    np.testing.assert_array_equal(big.obs_index, ref.obs_index)


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def real_v1() -> Vocab:
    return load_vocab(shared_path("geneformer-v1"))


@pytest.fixture(scope="module")
def real_v2() -> Vocab:
    return load_vocab(shared_path("geneformer-v2"))


def test_real_kang_v1(real_v1):
    path = shared_path("kang2018_pbmc_ifnb_2000.h5ad")
    adata = ad.read_h5ad(path)[:200].copy()
    cells = tokenize(adata, real_v1)
    check_against_reference(cells, adata, real_v1)
    assert len(cells) > 150
    # truncated well inside the expressed genes, where tie groups can be cut
    cells = tokenize(adata, real_v1, max_input=100)
    check_against_reference(cells, adata, real_v1, max_input=100)


@pytest.mark.parametrize("version", [1, 2])
def test_real_sciplex(version, request):
    vocab = request.getfixturevalue(f"real_v{version}")
    path = shared_path("sciplex2_a549_dex_500x198.h5ad")
    adata = ad.read_h5ad(path)
    cells = tokenize(adata, vocab)
    check_against_reference(cells, adata, vocab)
    cells = tokenize(adata, vocab, max_input=12)
    check_against_reference(cells, adata, vocab, max_input=12)
