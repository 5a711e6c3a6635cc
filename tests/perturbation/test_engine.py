"""The perturbation engine against a straightforward reference.

The reference (below) does what the Geneformer facts describe, the slow way: Python list surgery
on each cell's rank-value gene list, one Hugging Face ``BertForMaskedLM`` forward per sequence
(no padding, no batching), cosines of the genes found by value. The engine builds perturbations
by index arithmetic, packs them into token-budget batches and runs its own encoder; both must
give the same numbers within 1e-5 (fp32), the same rows and the same order, whatever the batch
budget and shard size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from ispo.errors import IspoError
from ispo.perturbation.engine import perturb

# must match tests/perturb/conftest.py (checked by test_fixture_sizes)
MAX_GENES = 12  # genes a model takes
N_DATA = 40  # vocabulary genes 0..N_DATA-1 occur in the data
ATOL = 1e-5
# batch budgets x shard sizes: one row per forward and one cell per shard, everything in one
# batch and one shard, something in between (shards split the length-sorted cell order)
SETTINGS = [
    dict(batch_tokens=1, shard_cells=1),
    dict(batch_tokens=10**7, shard_cells=1000),
    dict(batch_tokens=70, shard_cells=5),
    # batches mixing cells of different lengths run packed (varlen attention on CUDA)
    dict(batch_tokens=70, shard_cells=5, layout="packed"),
]
ID_COLS = ["cell_id", "obs_index", "perturbed_ids", "perturbed_symbols", "perturb_type", "n_genes"]
MISSING = 45  # a vocabulary gene no cell expresses (index >= N_DATA)
assert MISSING >= N_DATA


def gid(i: int) -> str:
    return f"ENSG{i:011d}"


def test_fixture_sizes(setup):
    assert (setup.max_genes, setup.n_data) == (MAX_GENES, N_DATA)
    assert setup.gid(3) == gid(3) and setup.n_vocab > MISSING


# -- the reference ----------------------------------------------------------------------------
_FORWARDS: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}


def hf_hidden(s, tokens: list[int]) -> torch.Tensor:
    """All hidden states (n_layers + 1, L, h) of one unpadded sequence, one HF forward."""
    key = (s.version, tuple(tokens))
    if key not in _FORWARDS:
        with torch.no_grad():
            # the BERT body of the BertForMaskedLM: same hidden states, MLM head not needed
            out = s.hf.bert(input_ids=torch.tensor([tokens]), output_hidden_states=True)
        _FORWARDS[key] = torch.stack(out.hidden_states)[:, 0].float()
    return _FORWARDS[key]


def layer_index(s, emb_layer: int) -> int:
    """Geneformer's emb_layer: -1 = hidden_states[n_layers - 1], 0 = the last layer."""
    return s.hf.config.num_hidden_layers + emb_layer


def embed_genes(s, genes: list[int], layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(gene hidden states (n, h), CLS hidden state or None) of a gene list at ``layer``."""
    toks = [s.vocab.cls_id, *genes, s.vocab.eos_id] if s.has_cls else list(genes)
    h = hf_hidden(s, toks)[layer]
    if s.has_cls:
        return h[1 : 1 + len(genes)], h[0]
    return h, None


def move_target_ref(p: int, n: int, kind: str, shift: int) -> int:
    """Quartile moves of the facts doc, plain integers: quartile t of rank p is 4p // n; its
    middle is the middle one (upper for an even count) of the ranks in quartile t; past the top
    -> front (0), past the bottom -> end (n - 1)."""
    t = (4 * p) // n
    t = t + shift if kind == "inhibit" else t - shift
    if t < 0:
        return 0
    if t > 3:
        return n - 1
    ranks = [r for r in range(n) if (4 * r) // n == t]
    if not ranks:  # fewer than 4 genes: an empty quartile; go where it would start
        return min(-(-t * n // 4), n - 1)
    return ranks[len(ranks) // 2]


def surgery_all(genes: list[int], kind: str, shift: int) -> list[tuple[list[int], list[int]]]:
    """(perturbed tokens, perturbed sequence) of each gene of a cell alone, in rank order."""
    out = []
    n = len(genes)
    for p, g in enumerate(genes):
        others = genes[:p] + genes[p + 1 :]
        if kind == "delete":
            out.append(([g], others))
            continue
        q = 0 if kind == "overexpress" else move_target_ref(p, n, kind, shift)
        if q == p:  # already there: nothing changes (Geneformer skips the first for overexpress)
            continue
        out.append(([g], others[:q] + [g] + others[q:]))
    return out


def surgery_list(genes: list[int], kind: str, targets: list[int]):
    if kind == "delete":
        if not all(t in genes for t in targets):
            return []
        return [(targets, [g for g in genes if g not in targets])]
    assert kind == "overexpress"
    return [(targets, list(targets) + [g for g in genes if g not in targets])]


def surgery_anchor(genes: list[int], kind: str, anchor: int):
    if anchor not in genes:
        return []
    out = []
    for g in genes:
        if g == anchor:
            continue
        rest = [x for x in genes if x not in (anchor, g)]
        out.append(([anchor, g], rest if kind == "delete" else [anchor, g, *rest]))
    return out


def state_embeddings(s, states: dict, layer: int, cls: bool) -> dict[str, torch.Tensor]:
    labels = s.adata.obs[states["state_key"]].astype(str).to_numpy()[s.cells.obs_index]
    out = {}
    for st in [states["goal_state"], *states.get("alt_states", [])]:
        embs = []
        for i in np.flatnonzero(labels == st):
            gh, ch = embed_genes(s, s.genes(i), layer)
            embs.append(ch if cls else gh.mean(0))
        out[st] = torch.stack(embs).mean(0)
    return out


def reference(
    s,
    kind: str,
    *,
    surgery,
    emb_layer: int = -1,
    emb_mode: str = "cell",
    states: dict | None = None,
    cells: list[int] | None = None,
):
    """Expected cell table and gene table (DataFrames) by list surgery and HF forwards.

    ``surgery(genes) -> [(perturbed tokens, perturbed gene list), ...]``. A perturbed list longer
    than the model input loses its tail and the original is cut by the same amount.
    """
    layer = layer_index(s, emb_layer)
    cls = emb_mode.startswith("cls")  # cls and cls_and_gene: the <cls> value and shifts
    id_of = s.vocab.id_of_token()
    labels = (
        s.adata.obs[states["state_key"]].astype(str).to_numpy()[s.cells.obs_index]
        if states
        else None
    )
    state_emb = state_embeddings(s, states, layer, cls) if states else {}
    rows, gene_rows = [], []
    for i in range(len(s.cells)) if cells is None else cells:
        if states and labels[i] != states["start_state"]:
            continue
        genes = s.genes(i)
        n = len(genes)
        for perturbed, new in surgery(genes):
            orig = genes
            if len(new) > MAX_GENES:
                cut = len(new) - MAX_GENES
                new, orig = new[:MAX_GENES], genes[: n - cut]
            oh, ocls = embed_genes(s, orig, layer)
            ph, pcls = embed_genes(s, new, layer)
            affected = [g for g in orig if g not in perturbed and g in new]
            assert affected, "reference: nothing left to compare"
            gcos = F.cosine_similarity(
                oh[[orig.index(g) for g in affected]], ph[[new.index(g) for g in affected]], dim=-1
            )
            ocell, pcell = (ocls, pcls) if cls else (oh.mean(0), ph.mean(0))
            ids = [id_of[t] for t in perturbed]
            row = {
                "cell_id": s.adata.obs_names[s.cells.obs_index[i]],
                "obs_index": int(s.cells.obs_index[i]),
                "perturbed_ids": "+".join(ids),
                "perturbed_symbols": "+".join(s.vocab.symbol(g) for g in ids),
                "perturb_type": kind,
                "n_genes": n,
                "cos_sim": float(F.cosine_similarity(pcls, ocls, dim=0))
                if cls
                else float(gcos.mean()),
                # always the mean-pooled cells, whatever the mode (users ask for it)
                "cell_cos_sim": float(F.cosine_similarity(ph.mean(0), oh.mean(0), dim=0)),
            }
            for st, emb in state_emb.items():
                row[f"shift_{st}"] = float(
                    F.cosine_similarity(pcell, emb, dim=0) - F.cosine_similarity(ocell, emb, dim=0)
                )
            rows.append(row)
            for g, c in zip(affected, gcos.tolist()):
                gene_rows.append(
                    {
                        "cell_id": row["cell_id"],
                        "obs_index": row["obs_index"],
                        "perturbed_ids": row["perturbed_ids"],
                        "affected_id": id_of[g],
                        "cos_sim": c,
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(gene_rows)


# -- comparison -------------------------------------------------------------------------------
def assert_table(
    got: pd.DataFrame,
    exp: pd.DataFrame,
    value_cols: list[str],
    id_cols: list[str] = ID_COLS,
    atol: float = ATOL,
) -> None:
    assert len(exp) > 0
    assert len(got) == len(exp), f"{len(got)} rows, expected {len(exp)}"
    for c in id_cols:
        assert got[c].tolist() == exp[c].tolist(), f"column {c} differs"
    for c in value_cols:
        np.testing.assert_allclose(
            got[c].to_numpy(np.float64), exp[c].to_numpy(np.float64), rtol=0, atol=atol, err_msg=c
        )


def run_all_settings(
    s,
    exp: pd.DataFrame,
    value_cols: list[str],
    exp_genes: pd.DataFrame | None = None,
    settings=SETTINGS,
    **kw,
) -> list[pd.DataFrame]:
    """Engine output equals the reference under every batch budget and shard size."""
    outs = []
    for setting in settings:
        df = perturb(s.adata, s.model, **kw, **setting)
        assert_table(df, exp, value_cols)
        if exp_genes is not None:
            gt = df.attrs["gene_table"]
            assert_table(
                gt, exp_genes, ["cos_sim"], ["cell_id", "obs_index", "perturbed_ids", "affected_id"]
            )
        else:
            assert "gene_table" not in df.attrs
        outs.append(df)
    for other in outs[1:]:  # and the settings agree with each other more tightly still
        assert dict(other.dtypes) == dict(outs[0].dtypes)
        for c in value_cols:
            np.testing.assert_allclose(
                other[c].to_numpy(), outs[0][c].to_numpy(), rtol=0, atol=2e-6, err_msg=c
            )
    return outs


# -- parity: every gene alone -----------------------------------------------------------------
# (kind, rank_shift, emb_layer): the first ones under every batch budget and shard size, the
# others under one mixed setting (several cells per batch, several shards)
FULL = [("delete", 1, -1), ("overexpress", 1, -1), ("inhibit", 1, -1), ("activate", 1, -1)]
ONE = [
    ("delete", 1, 0),
    ("overexpress", 1, 0),
    ("inhibit", 1, 0),
    ("activate", 1, 0),
    ("inhibit", 2, -1),
    ("inhibit", 3, -1),
    ("activate", 2, -1),
    ("activate", 3, -1),
    ("activate", 2, 0),
    ("inhibit", 2, 0),
]
CASES = [(*c, True) for c in FULL] + [(*c, False) for c in ONE]


@pytest.mark.parametrize(
    "kind,shift,emb_layer,sweep", CASES, ids=[f"{k}{s}-L{n}" for k, s, n, _ in CASES]
)
def test_all_genes_parity(setup, kind, shift, emb_layer, sweep):
    exp, exp_genes = reference(
        setup, kind, surgery=lambda g: surgery_all(g, kind, shift), emb_layer=emb_layer
    )
    run_all_settings(
        setup,
        exp,
        ["cos_sim", "cell_cos_sim"],
        exp_genes,
        perturb_type=kind,
        rank_shift=shift,
        emb_layer=emb_layer,
        emb_mode="cell_and_gene",
        settings=SETTINGS if sweep else SETTINGS[2:],
    )


def test_all_genes_rows_and_order(setup):
    """Rows in input cell order, each cell's perturbations in gene-rank order, every gene once;
    cell mode has no gene table and the same numbers as cell_and_gene."""
    df = perturb(
        setup.adata,
        setup.model,
        perturb_type="delete",
        emb_mode="cell",
        batch_tokens=64,
        shard_cells=4,
    )
    assert "gene_table" not in df.attrs
    id_of = setup.vocab.id_of_token()
    exp_ids, exp_obs = [], []
    for i in range(len(setup.cells)):
        exp_ids += [id_of[t] for t in setup.genes(i)]
        exp_obs += [int(setup.cells.obs_index[i])] * len(setup.genes(i))
    assert df["perturbed_ids"].tolist() == exp_ids
    assert df["obs_index"].tolist() == exp_obs == sorted(exp_obs)
    assert df["cos_sim"].dtype == np.float32 and df["cell_cos_sim"].dtype == np.float32
    both = perturb(
        setup.adata,
        setup.model,
        perturb_type="delete",
        emb_mode="cell_and_gene",
        batch_tokens=64,
        shard_cells=4,
    )
    pd.testing.assert_frame_equal(df, both, check_like=False)


# -- gene lists -------------------------------------------------------------------------------
def _gene_presence(s) -> dict[int, set[int]]:
    """Vocabulary gene index -> cells (tokenized, truncated) that have it."""
    where: dict[int, set[int]] = {}
    for i in range(len(s.cells)):
        for t in s.genes(i):
            where.setdefault(t, set()).add(i)
    return {g: where.get(s.token(g), set()) for g in range(N_DATA)}


def _pair_some_cells(s) -> tuple[int, int]:
    """Two data genes found together in some cells, but not in all of those that have one."""
    pres = _gene_presence(s)
    for a in range(N_DATA):
        for b in range(a + 1, N_DATA):
            both = pres[a] & pres[b]
            if len(both) >= 2 and len(both) < len(pres[a] | pres[b]):
                return b, a  # list order unlike gene order
    raise AssertionError("test data has no suitable gene pair")


@pytest.mark.parametrize("emb_layer", [-1, 0])
def test_gene_list_delete(setup, emb_layer):
    a, b = _pair_some_cells(setup)
    targets = [setup.token(a), setup.token(b)]
    exp, exp_genes = reference(
        setup, "delete", surgery=lambda g: surgery_list(g, "delete", targets), emb_layer=emb_layer
    )
    pres = _gene_presence(setup)
    assert len(exp) == len(pres[a] & pres[b]) < len(setup.cells)
    assert set(exp["perturbed_ids"]) == {f"{gid(a)}+{gid(b)}"}
    # symbols work as well as Ensembl ids
    run_all_settings(
        setup,
        exp,
        ["cos_sim", "cell_cos_sim"],
        exp_genes,
        genes=[gid(a), f"G{b}"],
        perturb_type="delete",
        emb_layer=emb_layer,
        emb_mode="cell_and_gene",
    )


def test_empty_shards_keep_dtypes(setup):
    """Shards where no cell has all listed genes give no rows, and change no column type."""
    a, b = _pair_some_cells(setup)
    df = perturb(setup.adata, setup.model, genes=[gid(a), gid(b)], shard_cells=1)
    assert 0 < len(df) < len(setup.cells)
    assert df["obs_index"].dtype == np.int64
    assert df["n_genes"].dtype == np.int32
    assert df["cos_sim"].dtype == np.float32
    assert df["cell_id"].map(type).eq(str).all()


def test_gene_list_single_delete_comma_string(setup):
    a, _ = _pair_some_cells(setup)
    targets = [setup.token(a)]
    exp, _ = reference(setup, "delete", surgery=lambda g: surgery_list(g, "delete", targets))
    df = perturb(setup.adata, setup.model, genes=f"{gid(a)},", perturb_type="delete")
    assert_table(df, exp, ["cos_sim", "cell_cos_sim"])


@pytest.mark.parametrize("emb_layer", [-1, 0])
def test_gene_list_overexpress(setup, emb_layer):
    """Every cell; listed genes removed then put first in list order; a gene no cell has is
    inserted as a new token; cells at max length overflow: tail and original cut alike."""
    pres = _gene_presence(setup)
    common = max(range(N_DATA), key=lambda g: len(pres[g]))
    rare = next(g for g in range(N_DATA) if 1 <= len(pres[g]) < len(setup.cells) // 2)
    targets = [setup.token(rare), setup.token(MISSING), setup.token(common)]
    exp, exp_genes = reference(
        setup,
        "overexpress",
        surgery=lambda g: surgery_list(g, "overexpress", targets),
        emb_layer=emb_layer,
    )
    assert len(exp) == len(setup.cells)
    # the test data does overflow: cells at max length that lack a listed gene
    n_genes = [len(setup.genes(i)) for i in range(len(setup.cells))]
    overflowing = [
        i
        for i in range(len(setup.cells))
        if n_genes[i] == MAX_GENES
        and not {setup.token(rare), setup.token(common)} <= set(setup.genes(i))
    ]
    assert overflowing
    run_all_settings(
        setup,
        exp,
        ["cos_sim", "cell_cos_sim"],
        exp_genes,
        genes=[gid(rare), gid(MISSING), gid(common)],
        perturb_type="overexpress",
        emb_layer=emb_layer,
        emb_mode="cell_and_gene",
    )


def test_overexpress_missing_gene_overflow_exact(setup):
    """A max-length cell overexpressing one gene it lacks: the perturbed sequence is the new
    gene then the first MAX_GENES - 1 genes, compared with the original cut to those genes."""
    i = next(i for i in range(len(setup.cells)) if len(setup.genes(i)) == MAX_GENES)
    genes = setup.genes(i)
    new = setup.token(MISSING)
    layer = layer_index(setup, -1)
    oh, _ = embed_genes(setup, genes[: MAX_GENES - 1], layer)
    ph, _ = embed_genes(setup, [new, *genes[: MAX_GENES - 1]], layer)
    cos = float(F.cosine_similarity(oh, ph[1:], dim=-1).mean())
    cell_cos = float(F.cosine_similarity(oh.mean(0), ph.mean(0), dim=0))
    df = perturb(
        setup.adata,
        setup.model,
        genes=[gid(MISSING)],
        perturb_type="overexpress",
        emb_mode="cell_and_gene",
    )
    row = df[df["obs_index"] == setup.cells.obs_index[i]]
    assert len(row) == 1
    assert row["cos_sim"].iloc[0] == pytest.approx(cos, abs=ATOL)
    assert row["cell_cos_sim"].iloc[0] == pytest.approx(cell_cos, abs=ATOL)
    gt = df.attrs["gene_table"]
    assert (gt["obs_index"] == setup.cells.obs_index[i]).sum() == MAX_GENES - 1


# -- anchor pairs -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["delete", "overexpress"])
def test_anchor_pairs(setup, kind):
    pres = _gene_presence(setup)
    anchor = next(g for g in range(N_DATA) if 2 <= len(pres[g]) < len(setup.cells))
    a_tok = setup.token(anchor)
    exp, exp_genes = reference(setup, kind, surgery=lambda g: surgery_anchor(g, kind, a_tok))
    assert len(exp["obs_index"].unique()) == len(pres[anchor])
    run_all_settings(
        setup,
        exp,
        ["cos_sim", "cell_cos_sim"],
        exp_genes,
        perturb_type=kind,
        anchor_gene=f"G{anchor}",
        combos=1,
        emb_mode="cell_and_gene",
    )


# -- cell states ------------------------------------------------------------------------------
STATES = {"state_key": "state", "start_state": "a", "goal_state": "b", "alt_states": ["c"]}


@pytest.mark.parametrize("emb_layer", [-1, 0])
@pytest.mark.parametrize("kind", ["delete", "overexpress", "activate"])
def test_cell_states(setup, kind, emb_layer):
    exp, _ = reference(
        setup, kind, surgery=lambda g: surgery_all(g, kind, 1), emb_layer=emb_layer, states=STATES
    )
    labels = setup.adata.obs["state"].to_numpy()
    assert set(labels[exp["obs_index"]]) == {"a"}
    assert exp["obs_index"].nunique() == (labels == "a").sum()
    outs = run_all_settings(
        setup,
        exp,
        ["cos_sim", "cell_cos_sim", "shift_b", "shift_c"],
        perturb_type=kind,
        emb_layer=emb_layer,
        cell_states=STATES,
    )
    assert [c for c in outs[0].columns if c.startswith("shift_")] == ["shift_b", "shift_c"]


def test_cell_states_gene_list_overexpress_overflow(setup):
    targets = [setup.token(MISSING)]
    states = {"state_key": "state", "start_state": "b", "goal_state": "c"}
    exp, _ = reference(
        setup,
        "overexpress",
        states=states,
        surgery=lambda g: surgery_list(g, "overexpress", targets),
    )
    df = perturb(
        setup.adata,
        setup.model,
        genes=[gid(MISSING)],
        perturb_type="overexpress",
        cell_states=states,
    )
    assert_table(df, exp, ["cos_sim", "cell_cos_sim", "shift_c"])


# -- CLS mode (V2) ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["delete", "overexpress", "inhibit"])
def test_cls_mode_v2(setup_v2, kind):
    s = setup_v2
    exp, _ = reference(s, kind, surgery=lambda g: surgery_all(g, kind, 2), emb_mode="cls")
    run_all_settings(
        s, exp, ["cos_sim", "cell_cos_sim"], perturb_type=kind, rank_shift=2, emb_mode="cls"
    )


@pytest.mark.parametrize("kind", ["delete", "overexpress"])
def test_cls_and_gene_v2(setup_v2, kind):
    """Geneformer's cls_and_gene: the <cls> cosine as the cell value (as ``cls``) and the gene
    tokens' cosines (never <cls>/<eos>) in the gene table (as ``cell_and_gene``)."""
    s = setup_v2
    exp, exp_genes = reference(
        s, kind, surgery=lambda g: surgery_all(g, kind, 1), emb_mode="cls_and_gene"
    )
    run_all_settings(
        s, exp, ["cos_sim", "cell_cos_sim"], exp_genes, perturb_type=kind, emb_mode="cls_and_gene"
    )


def test_cls_and_gene_v2_gene_list_states(setup_v2):
    s = setup_v2
    a, b = _pair_some_cells(s)
    targets = [s.token(a), s.token(b)]
    exp, exp_genes = reference(
        s,
        "overexpress",
        surgery=lambda g: surgery_list(g, "overexpress", targets),
        emb_mode="cls_and_gene",
        states=STATES,
    )
    df = perturb(
        s.adata,
        s.model,
        genes=[gid(a), gid(b)],
        perturb_type="overexpress",
        emb_mode="cls_and_gene",
        cell_states=STATES,
    )
    assert_table(df, exp, ["cos_sim", "cell_cos_sim", "shift_b", "shift_c"])
    gt = df.attrs["gene_table"]
    assert_table(
        gt, exp_genes, ["cos_sim"], ["cell_id", "obs_index", "perturbed_ids", "affected_id"]
    )


def test_cls_mode_v2_states(setup_v2):
    s = setup_v2
    exp, _ = reference(
        s, "delete", surgery=lambda g: surgery_all(g, "delete", 1), emb_mode="cls", states=STATES
    )
    df = perturb(s.adata, s.model, perturb_type="delete", emb_mode="cls", cell_states=STATES)
    assert_table(df, exp, ["cos_sim", "cell_cos_sim", "shift_b", "shift_c"])


# -- degenerate cells ------------------------------------------------------------------------
def _with_tiny_cells(s):
    """cell0 with many genes (G3 and G5 among them), cell1 with one gene (G3), cell2 with two
    genes (G3, G5)."""
    adata = s.adata[[0, 1, 2]].copy()
    X = adata.X.toarray()
    X[0, 3], X[0, 5] = 500, 400
    X[1:] = 0
    X[1, 3] = 5
    X[2, 3], X[2, 5] = 5, 9
    adata.X = sp.csr_matrix(X)
    return adata


def _moves(n: int, kind: str, shift: int = 1) -> int:
    return sum(move_target_ref(p, n, kind, shift) != p for p in range(n))


# rows expected for cell1 (one gene: G3) and cell2 (two genes: G3, G5)
TINY_CASES = {
    "delete": ("delete", {}, {1: 0, 2: 2}),
    "overexpress": ("overexpress", {}, {1: 0, 2: 1}),
    "inhibit": ("inhibit", {}, {1: 0, 2: _moves(2, "inhibit")}),
    "activate": ("activate", {}, {1: 0, 2: _moves(2, "activate")}),
    "list1-delete": ("delete", {"genes": [gid(3)]}, {1: 0, 2: 1}),
    "list2-delete": ("delete", {"genes": [gid(3), gid(5)]}, {1: 0, 2: 0}),
    "list2-overexpress": ("overexpress", {"genes": [gid(3), gid(5)]}, {1: 0, 2: 0}),
    "anchor-delete": ("delete", {"anchor_gene": gid(3), "combos": 1}, {1: 0, 2: 0}),
    "anchor-overexpress": ("overexpress", {"anchor_gene": gid(3), "combos": 1}, {1: 0, 2: 0}),
}


@pytest.mark.parametrize("case", list(TINY_CASES))
def test_perturbation_leaving_nothing_to_compare(setup, case):
    """A perturbation that leaves no other gene to compare (a cell's only gene(s) deleted, or
    only listed/anchor genes left) is skipped: no crash, no NaN rows; other cells unaffected."""
    kind, kw, expected = TINY_CASES[case]
    adata = _with_tiny_cells(setup)
    df = perturb(adata, setup.model, perturb_type=kind, emb_mode="cell_and_gene", **kw)
    assert not df[["cos_sim", "cell_cos_sim"]].isna().any().any()
    counts = df.groupby("obs_index").size().to_dict()
    assert {i: counts.get(i, 0) for i in (1, 2)} == expected
    assert counts.get(0, 0) > 0  # the ordinary cell is still perturbed


# -- cell selection ---------------------------------------------------------------------------
def test_cell_filter_and_range(setup):
    batch = setup.adata.obs["batch"].to_numpy()[setup.cells.obs_index]
    y_cells = [i for i in range(len(setup.cells)) if batch[i] == "y"]
    exp, _ = reference(
        setup, "delete", surgery=lambda g: surgery_all(g, "delete", 1), cells=y_cells[1:3]
    )
    df = perturb(
        setup.adata,
        setup.model,
        perturb_type="delete",
        cell_filter={"batch": "y"},
        cell_range=(1, 3),
    )
    assert_table(df, exp, ["cos_sim", "cell_cos_sim"])
    df = perturb(
        setup.adata, setup.model, perturb_type="delete", cell_filter={"batch": ["y"]}, max_ncells=2
    )
    # Geneformer's draw: Dataset.shuffle(seed=42) of the filtered cells, the first two kept
    drawn = sorted(np.random.default_rng(42).permutation(len(y_cells))[:2])
    assert drawn != [0, 1]  # the draw differs from taking the first cells
    assert df["obs_index"].unique().tolist() == [setup.cells.obs_index[y_cells[i]] for i in drawn]


# -- bad input --------------------------------------------------------------------------------
def _expect_error(s, match: str, **kw) -> str:
    """The error names the problem and the fix (``match``, a regex) on one line."""
    with pytest.raises(IspoError, match=match) as info:
        perturb(s.adata, s.model, **kw)
    msg = str(info.value)
    assert "\n" not in msg, f"not one line: {msg!r}"
    return msg


NOT_IN_VOCAB = r"is not in the vocabulary \(perturb-test-v1\): give an Ensembl id or symbol"
NOT_EXPRESSED = r"is not expressed in any selected cell: choose another gene or other cells"
NO_CELL = (
    r"no cell left to perturb after {}: check the filters, the state labels and the cell range"
)
BAD_OPTIONS = {
    "gene_not_in_vocab": dict(genes=["ENSG99999999999"], match="'ENSG99999999999' " + NOT_IN_VOCAB),
    "anchor_not_in_vocab": dict(anchor_gene="NOPE", combos=1, match="'NOPE' " + NOT_IN_VOCAB),
    "gene_not_expressed": dict(genes=[gid(MISSING)], perturb_type="delete", match=NOT_EXPRESSED),
    "anchor_not_expressed": dict(anchor_gene=gid(MISSING), combos=1, match=NOT_EXPRESSED),
    "anchor_and_list": dict(
        genes=[gid(0)], anchor_gene=gid(1), combos=1, match=r"use genes='all' with --anchor-gene"
    ),
    "combos_without_anchor": dict(
        combos=1, match=r"combos=1 needs an anchor gene \(--anchor-gene\)"
    ),
    "combos_2": dict(combos=2, anchor_gene=gid(0), match=r"combos must be 0 or 1 .*, not 2"),
    "anchor_inhibit": dict(
        anchor_gene=gid(0),
        combos=1,
        perturb_type="inhibit",
        match=r"anchor pairs support delete and overexpress, not .inhibit.: pass --perturb-type",
    ),
    "inhibit_two_genes": dict(
        genes=[gid(0), gid(1)], perturb_type="inhibit", match="take one gene .*one gene at a time"
    ),
    "activate_two_genes": dict(
        genes=[gid(0), gid(1)], perturb_type="activate", match="take one gene .*one gene at a time"
    ),
    "rank_shift_4": dict(
        perturb_type="activate", rank_shift=4, match="rank_shift must be 1, 2 or 3"
    ),
    "rank_shift_0": dict(
        perturb_type="inhibit", rank_shift=0, match="rank_shift must be 1, 2 or 3"
    ),
    "unknown_type": dict(perturb_type="knockout", match="perturb_type must be one of .*'knockout'"),
    "unknown_emb_mode": dict(
        emb_mode="gene", match="emb_mode must be one of cell, cell_and_gene, cls, cls_and_gene"
    ),
    "emb_layer_5": dict(emb_layer=5, match=r"emb_layer must be -1 \(penultimate\) or 0 \(last\)"),
    "gene_twice": dict(genes=[gid(0), "G0"], match=r"names a gene twice .*: list each once"),
    "empty_list": dict(genes=[], match="no gene to perturb: give 'all' or a list of genes"),
    "unknown_start_state": dict(
        cell_states={**STATES, "start_state": "zz"}, match=NO_CELL.format("start state 'zz'")
    ),
    "unknown_goal_state": dict(
        cell_states={**STATES, "goal_state": "zz"}, match=r"state 'zz' not found .*known states"
    ),
    "unknown_alt_state": dict(
        cell_states={**STATES, "alt_states": ["zz"]}, match=r"state 'zz' not found .*known states"
    ),
    "unknown_state_key": dict(
        cell_states={**STATES, "state_key": "nope"}, match="state_key 'nope' is not an obs column"
    ),
    "states_missing_goal": dict(
        cell_states={"state_key": "state", "start_state": "a"},
        match="cell_states lacks 'goal_state': give state_key, start_state, goal_state",
    ),
    "filter_key": dict(
        cell_filter={"nope": "x"}, match=r"filter key 'nope' is not an obs column: choose one of"
    ),
    "no_cell_in_range": dict(cell_range=(100, 200), match=NO_CELL.format("the filters")),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_input(setup_v1, case):
    kw = dict(BAD_OPTIONS[case])
    match = kw.pop("match")
    _expect_error(setup_v1, match, **kw)


@pytest.mark.parametrize("mode,fallback", [("cls", "cell"), ("cls_and_gene", "cell_and_gene")])
def test_cls_needs_v2(setup_v1, mode, fallback):
    _expect_error(
        setup_v1,
        rf"emb_mode '{mode}' needs a V2 vocabulary .*use '{fallback}' for V1",
        emb_mode=mode,
    )


def test_start_state_without_cells(setup):
    """A start state that is a known category but has no cell (e.g. an unused category)."""
    adata = setup.adata.copy()
    adata.obs["state"] = pd.Categorical(adata.obs["state"], categories=["a", "b", "c", "d"])
    with pytest.raises(IspoError, match=NO_CELL.format("start state 'd'")) as info:
        perturb(adata, setup.model, cell_states={**STATES, "start_state": "d"})
    assert "\n" not in str(info.value)
    # start-state cells all filtered out
    with pytest.raises(IspoError, match=NO_CELL.format("start state 'a'")):
        perturb(setup.adata, setup.model, cell_states=STATES, cell_range=(4, 4))
