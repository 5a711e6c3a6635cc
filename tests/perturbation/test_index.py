"""Unit tests of ``ispo.perturbation.index`` against list surgery on small integer lists.

Gene tokens are distinct integers >= 100 (so a position can never be mistaken for a token), in
a shuffled order. Every ``Perturbations`` is checked row by row: the perturbed tokens equal the
list-surgery result, ``aff_orig``/``aff_pert`` list exactly the unperturbed genes (in original
order) and point at the same gene (``tokens[aff_pert] == genes[aff_orig]``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ispo.perturbation.index import build, each_gene, gene_set, move_target, with_anchor

BIG = 10**6  # max_genes that never truncates


def make_genes(n: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    return [100 + int(x) for x in rng.permutation(3 * n + 1)[:n]]


def T(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.long)


from test_engine import move_target_ref as target_ref  # noqa: E402  (one reference rule)


def check(spec, genes: list[int], expected: list[tuple[list[int], list[int]]], max_genes=BIG):
    """``expected``: [(perturbed tokens, perturbed list before any cut)] in row order."""
    n = len(genes)
    assert len(spec) == len(expected)
    assert spec.tokens.shape[0] == spec.aff_orig.shape[0] == spec.aff_pert.shape[0]
    for r, (labels, new) in enumerate(expected):
        orig_len = n
        if len(new) > max_genes:
            cut = len(new) - max_genes
            new, orig_len = new[:max_genes], n - cut
        assert spec.orig_len == orig_len
        assert spec.tokens[r].tolist() == new, f"row {r}"
        got_labels = spec.perturbed[r] if spec.perturbed.shape[0] > 1 else spec.perturbed[0]
        assert got_labels.tolist() == labels
        kept = [j for j, g in enumerate(genes[:orig_len]) if g not in labels and g in new]
        assert spec.aff_orig[r].tolist() == kept, f"row {r}"
        assert spec.aff_pert[r].tolist() == [new.index(genes[j]) for j in kept], f"row {r}"
        tok = spec.tokens[r]
        assert tok[spec.aff_pert[r]].tolist() == [genes[j] for j in spec.aff_orig[r].tolist()]


# -- move_target: the quartile rules ----------------------------------------------------------
# n = 16: quartiles are ranks 0-3, 4-7, 8-11, 12-15; their middles 2, 6, 10, 14; bottom 15.
Q = [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]
RULES_16 = {
    # activate by 1: 4th -> middle of 3rd, 3rd -> middle of 2nd, 2nd -> middle of 1st, 1st -> front
    ("activate", 1): [0, 2, 6, 10],
    ("activate", 2): [0, 0, 2, 6],
    ("activate", 3): [0, 0, 0, 2],
    ("inhibit", 1): [6, 10, 14, 15],
    # inhibit by 2: 1st -> middle of 3rd, 2nd -> middle of 4th, 3rd and 4th -> bottom
    ("inhibit", 2): [10, 14, 15, 15],
    ("inhibit", 3): [14, 15, 15, 15],
}


@pytest.mark.parametrize("kind,shift", list(RULES_16))
def test_move_target_quartile_rules(kind, shift):
    dest = RULES_16[(kind, shift)]
    p = torch.arange(16)
    got = move_target(p, 16, kind, shift).tolist()
    assert got == [dest[q] for q in range(4) for _ in Q[q]]


def test_move_target_small_n_hand_values():
    # n = 8: quartiles {0,1} {2,3} {4,5} {6,7}, middles (upper) 1, 3, 5, 7
    p = torch.arange(8)
    assert move_target(p, 8, "activate", 1).tolist() == [0, 0, 1, 1, 3, 3, 5, 5]
    assert move_target(p, 8, "inhibit", 2).tolist() == [5, 5, 7, 7, 7, 7, 7, 7]
    assert move_target(torch.arange(1), 1, "inhibit", 1).tolist() == [0]
    assert move_target(torch.arange(1), 1, "activate", 3).tolist() == [0]


@pytest.mark.parametrize("n", list(range(1, 30)))
def test_move_target_general(n):
    p = torch.arange(n)
    for kind in ("inhibit", "activate"):
        for shift in (1, 2, 3):
            got = move_target(p, n, kind, shift).tolist()
            assert got == [target_ref(i, n, kind, shift) for i in range(n)]
            assert all(0 <= q < n for q in got)
            assert got == sorted(got)  # ranks keep their order
            if n >= 4:  # inhibit never moves a gene up, activate never down
                assert all(q >= i if kind == "inhibit" else q <= i for i, q in enumerate(got))


@pytest.mark.parametrize("n", [*range(5, 70)])
def test_move_target_lands_in_target_quartile(n):
    """The destination is inside the target quartile (same quartile rule as the source)."""
    p = torch.arange(n)
    for kind in ("inhibit", "activate"):
        for shift in (1, 2, 3):
            got = move_target(p, n, kind, shift).tolist()
            for i, q in enumerate(got):
                t = (4 * i) // n + (shift if kind == "inhibit" else -shift)
                if 0 <= t <= 3:
                    assert (4 * q) // n == t, (kind, shift, i, q)


# -- each_gene --------------------------------------------------------------------------------
def surgery_each(genes, kind, shift=1):
    out = []
    n = len(genes)
    for p, g in enumerate(genes):
        others = genes[:p] + genes[p + 1 :]
        if kind == "delete":
            out.append(([g], others))
            continue
        q = 0 if kind == "overexpress" else target_ref(p, n, kind, shift)
        if q != p:
            out.append(([g], others[:q] + [g] + others[q:]))
    return out


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 8, 12, 13, 17])
@pytest.mark.parametrize(
    "kind,shift",
    [
        ("delete", 1),
        ("overexpress", 1),
        ("inhibit", 1),
        ("inhibit", 2),
        ("inhibit", 3),
        ("activate", 1),
        ("activate", 2),
        ("activate", 3),
    ],
)
def test_each_gene(n, kind, shift):
    genes = make_genes(n, seed=n)
    spec = each_gene(T(genes), kind, rank_shift=shift, max_genes=BIG)
    check(spec, genes, surgery_each(genes, kind, shift))


def test_each_gene_overexpress_skips_first():
    genes = make_genes(6)
    spec = each_gene(T(genes), "overexpress", max_genes=BIG)
    assert spec.perturbed[:, 0].tolist() == genes[1:]
    assert (spec.tokens[:, 0] == spec.perturbed[:, 0]).all()


def test_each_gene_single_gene_cell():
    spec = each_gene(T([105]), "delete", max_genes=BIG)
    assert spec.tokens.shape == (1, 0) and spec.aff_orig.shape == (1, 0)
    for kind in ("overexpress", "inhibit", "activate"):
        assert len(each_gene(T([105]), kind, max_genes=BIG)) == 0


# -- with_anchor ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["delete", "overexpress"])
@pytest.mark.parametrize("anchor_pos", [0, 3, 8])
def test_with_anchor(kind, anchor_pos):
    genes = make_genes(9, seed=anchor_pos)
    a = genes[anchor_pos]
    expected = []
    for g in genes:
        if g == a:
            continue
        rest = [x for x in genes if x not in (a, g)]
        expected.append(([a, g], rest if kind == "delete" else [a, g, *rest]))
    check(with_anchor(T(genes), anchor_pos, kind, max_genes=BIG), genes, expected)


def test_with_anchor_rejects_moves():
    with pytest.raises(ValueError, match="anchor pairs support delete and overexpress"):
        with_anchor(T(make_genes(5)), 1, "inhibit", max_genes=BIG)


# -- gene_set ---------------------------------------------------------------------------------
def test_gene_set_delete():
    genes = make_genes(10)
    targets = [genes[7], genes[2]]  # list order unlike rank order
    spec = gene_set(T(genes), T(targets), "delete", max_genes=BIG)
    check(spec, genes, [(targets, [g for g in genes if g not in targets])])
    assert gene_set(T(genes), T([genes[1], 99]), "delete", max_genes=BIG) is None


@pytest.mark.parametrize(
    "targets_at", [[4], [0], [6, 1], [0, 1], [3, None], [None], [None, 2, None]]
)
def test_gene_set_overexpress(targets_at):
    """Listed genes present are removed, then all listed genes go first in list order; genes
    the cell lacks (None here) are inserted as new tokens."""
    genes = make_genes(8, seed=len(targets_at))
    new_tokens = iter([90, 91, 92])
    targets = [genes[i] if i is not None else next(new_tokens) for i in targets_at]
    spec = gene_set(T(genes), T(targets), "overexpress", max_genes=BIG)
    check(spec, genes, [(targets, targets + [g for g in genes if g not in targets])])


@pytest.mark.parametrize("present_at", ["top", "tail"])
@pytest.mark.parametrize("n_missing,n_present", [(1, 0), (2, 0), (1, 1), (2, 2), (3, 1)])
def test_gene_set_overexpress_overflow(n_missing, n_present, present_at):
    """A cell at max length: inserted genes push the tail out, and the original is cut by the
    same amount; only genes on both sides are compared (a listed gene of the cut tail is in
    neither)."""
    n = 10
    genes = make_genes(n, seed=n_missing)
    present = range(n_present) if present_at == "top" else range(n - 1, n - 1 - n_present, -1)
    targets = [genes[i] for i in present] + [90 + i for i in range(n_missing)]
    spec = gene_set(T(genes), T(targets), "overexpress", max_genes=n)
    new = targets + [g for g in genes if g not in targets]
    check(spec, genes, [(targets, new)], max_genes=n)
    assert spec.tokens.shape[1] == n
    assert spec.orig_len == n - n_missing
    # compared genes: the same set on both sides
    kept = [genes[j] for j in spec.aff_orig[0].tolist()]
    assert kept == [g for g in genes[: n - n_missing] if g not in targets and g in new[:n]]
    if present_at == "top":  # the usual case: the whole cut original is compared
        assert kept == [g for g in genes[: n - n_missing] if g not in targets]


def test_gene_set_overexpress_only_listed_genes():
    genes = make_genes(3)
    assert gene_set(T(genes), T(genes[::-1]), "overexpress", max_genes=BIG) is None


@pytest.mark.parametrize("kind", ["inhibit", "activate"])
@pytest.mark.parametrize("shift", [1, 2, 3])
@pytest.mark.parametrize("p", [0, 3, 6, 11])
def test_gene_set_move(kind, shift, p):
    genes = make_genes(12, seed=p)
    spec = gene_set(T(genes), T([genes[p]]), kind, rank_shift=shift, max_genes=BIG)
    q = target_ref(p, 12, kind, shift)
    if q == p:
        assert spec is None
        return
    others = genes[:p] + genes[p + 1 :]
    check(spec, genes, [([genes[p]], others[:q] + [genes[p]] + others[q:])])


def test_gene_set_move_errors():
    genes = make_genes(8)
    with pytest.raises(ValueError, match="inhibit/activate take one gene at a time"):
        gene_set(T(genes), T(genes[:2]), "inhibit", max_genes=BIG)
    assert gene_set(T(genes), T([99]), "activate", max_genes=BIG) is None


# -- build ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_build_random(seed):
    """Random removals and blocks (old positions and new tokens) inserted anywhere."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 12))
    genes = make_genes(n, seed=seed)
    P = 4
    s = int(rng.integers(0, min(3, n - 1) + 1))
    removed = (
        np.stack([np.sort(rng.choice(n, size=s, replace=False)) for _ in range(P)])
        if s
        else np.zeros((P, 0), dtype=np.int64)
    )
    f = int(rng.integers(0, 3))
    blocks, labels, expected = [], [], []
    qs = []
    for r in range(P):
        rem = removed[r].tolist()
        # the block: some removed genes (moved) and new tokens (-(token + 1))
        block = [int(x) for x in rng.permutation(rem)[:f]]
        while len(block) < f:
            block.append(-(80 + len(block) + r * 3) - 1)
        others = [g for j, g in enumerate(genes) if j not in rem]
        q = int(rng.integers(0, len(others) + 1))
        ins = [genes[b] if b >= 0 else -b - 1 for b in block]
        blocks.append(block)
        qs.append(q)
        lab = [genes[j] for j in rem]
        labels.append(lab)
        expected.append((lab, others[:q] + ins + others[q:]))
    spec = build(
        T(genes),
        T(removed.tolist()).view(P, s),
        T(blocks).view(P, f),
        T(qs),
        T(labels).view(P, s),
        BIG,
    )
    assert spec.tokens.shape == (P, n - s + f)
    check(spec, genes, expected)


def test_build_truncates_at_max_genes():
    genes = make_genes(6)
    # remove position 4, insert two new tokens at the front: length 7 > 6
    spec = build(T(genes), T([[4]]), T([[-91, -92]]), T([0]), T([[genes[4]]]), 6)
    new = [90, 91] + genes[:4] + genes[5:]
    check(spec, genes, [([genes[4]], new)], max_genes=6)
    assert spec.orig_len == 5 and spec.tokens.shape == (1, 6)
