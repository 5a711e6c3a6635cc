"""Perturbed sequences by index arithmetic, built on the device for all perturbations at once.

Every Geneformer perturbation of a cell's gene list (length ``n``, gene space: no ``<cls>``/
``<eos>``) is "remove the genes at positions R, then insert a block F at position q":

- delete:        R = {p},        F = []                     (length n - 1)
- overexpress:   R = {p},        F = [p],      q = 0        (the gene moves to the front)
- inhibit/activate: R = {p},     F = [p],      q = target   (the gene moves by quartiles)
- a gene set / an anchor pair: R = the genes present, F = the set (overexpress) or []

Entries of F are gene positions (>= 0) or new tokens encoded as ``-(token + 1)`` (overexpressing
a gene the cell lacks). The genes that were not perturbed keep their order, so each "affected"
gene's original position ``aff_orig`` and perturbed position ``aff_pert`` are plain arithmetic,
and the comparison is a gather. No per-perturbation Python list surgery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

PerturbType = Literal["delete", "overexpress", "inhibit", "activate"]


@dataclass
class Perturbations:
    """P perturbations of one cell, all of the same length (one padded-free block)."""

    tokens: torch.Tensor  # (P, m) perturbed gene tokens, no specials
    aff_orig: torch.Tensor  # (P, k) gene-space positions of the unperturbed genes, original
    aff_pert: torch.Tensor  # (P, k) their positions in the perturbed sequence
    perturbed: torch.Tensor  # (P, f_or_s) tokens of the perturbed gene(s), for the output
    orig_len: int  # genes of the original to compare against (< n only after an overflow cut)

    def __len__(self) -> int:
        return self.tokens.shape[0]


def move_target(p: torch.Tensor, n: int, kind: PerturbType, shift: int) -> torch.Tensor:
    """Where inhibit/activate move the gene at rank ``p`` of ``n`` (0 = highest).

    The gene's quartile (0 = top; rank p is in quartile 4p // n) moves ``shift`` quartiles down
    (inhibit) or up (activate), to the middle rank of that quartile (the upper middle for an
    even count); past the top it goes to the front, past the bottom to the end.
    """
    quart = (4 * p) // n
    target = quart + shift if kind == "inhibit" else quart - shift
    t = target.clamp(0, 3)
    first, last = (t * n + 3) // 4, ((t + 1) * n + 3) // 4 - 1  # ranks of quartile t
    middle = (first + last + 1) // 2
    out = torch.where(target < 0, torch.zeros_like(p), middle)
    out = torch.where(target > 3, torch.full_like(p, n - 1), out)
    return out.clamp(0, n - 1)


def build(
    genes: torch.Tensor,
    removed: torch.Tensor,
    block: torch.Tensor,
    q: torch.Tensor,
    labels: torch.Tensor,
    max_genes: int,
) -> Perturbations:
    """Remove ``removed`` (P, s; ascending) and insert ``block`` (P, f) at ``q`` (P,).

    A result longer than ``max_genes`` loses its tail, and the original is compared on the same
    genes (``orig_len`` shrinks by the same amount), as Geneformer does for overexpression.
    """
    dev = genes.device
    n = genes.shape[0]
    P, s = removed.shape
    f = block.shape[1]
    k_idx = torch.arange(n - s, device=dev).expand(P, n - s)
    others = k_idx.clone()
    for i in range(s):  # skip each removed position in ascending order
        others = others + (others >= removed[:, i : i + 1])
    m = n - s + f
    j = torch.arange(m, device=dev).expand(P, m)
    qc = q[:, None]
    in_block = (j >= qc) & (j < qc + f)
    other_pos = (j - f * (j >= qc + f)).clamp(0, max(n - s - 1, 0))
    seq = torch.gather(others, 1, other_pos) if n - s > 0 else torch.zeros_like(j)
    if f:
        seq = torch.where(in_block, torch.gather(block, 1, (j - qc).clamp(0, f - 1)), seq)
    tokens = torch.where(seq >= 0, genes[seq.clamp(min=0)], -seq - 1)
    aff_pert = k_idx + f * (k_idx >= qc)
    aff_orig = others
    orig_len = n
    if m > max_genes:
        cut = m - max_genes
        tokens = tokens[:, :max_genes]
        orig_len = n - cut
        keep = (aff_pert[0] < max_genes) & (aff_orig[0] < orig_len)
        aff_pert, aff_orig = aff_pert[:, keep], aff_orig[:, keep]
    return Perturbations(tokens, aff_orig, aff_pert, labels, orig_len)


def each_gene(
    genes: torch.Tensor, kind: PerturbType, *, rank_shift: int = 1, max_genes: int
) -> Perturbations:
    """Every gene of the cell perturbed alone (``genes="all"``).

    Overexpressing the gene already first, or moving a gene to where it already is, changes
    nothing and is skipped (Geneformer skips the former).
    """
    n = genes.shape[0]
    p = torch.arange(n, device=genes.device)
    if kind == "delete":
        empty = torch.zeros(n, 0, dtype=torch.long, device=genes.device)
        return build(genes, p[:, None], empty, torch.zeros_like(p), genes[p][:, None], max_genes)
    q = torch.zeros_like(p) if kind == "overexpress" else move_target(p, n, kind, rank_shift)
    moved = q != p
    p, q = p[moved], q[moved]
    return build(genes, p[:, None], p[:, None], q, genes[p][:, None], max_genes)


def with_anchor(
    genes: torch.Tensor, anchor_pos: int, kind: PerturbType, *, max_genes: int
) -> Perturbations:
    """The anchor gene perturbed together with each other gene of the cell (``combos=1``)."""
    n = genes.shape[0]
    p = torch.arange(n, device=genes.device)
    p = p[p != anchor_pos]
    a = torch.full_like(p, anchor_pos)
    removed = torch.stack([torch.minimum(a, p), torch.maximum(a, p)], 1)
    labels = torch.stack([genes[a], genes[p]], 1)
    if kind == "delete":
        block = torch.zeros(len(p), 0, dtype=torch.long, device=genes.device)
    elif kind == "overexpress":
        block = torch.stack([a, p], 1)
    else:
        raise ValueError("anchor pairs support delete and overexpress")
    return build(genes, removed, block, torch.zeros_like(p), labels, max_genes)


def gene_set(
    genes: torch.Tensor,
    targets: torch.Tensor,
    kind: PerturbType,
    *,
    rank_shift: int = 1,
    max_genes: int,
) -> Perturbations | None:
    """The listed gene tokens perturbed together in one cell; None when it does not apply.

    delete / inhibit / activate need every listed gene in the cell; overexpress applies to every
    cell (genes it lacks are inserted), listed genes first, in list order.
    """
    dev = genes.device
    pos = torch.full((len(targets),), -1, dtype=torch.long, device=dev)
    hit = genes[None, :] == targets[:, None]  # (t, n)
    present = hit.any(1)
    pos[present] = hit.float().argmax(1)[present]
    labels = targets[None, :]
    if kind == "overexpress":
        removed = pos[present].sort().values[None, :]
        block = torch.where(present, pos, -targets.long() - 1)[None, :]
        if removed.shape[1] == genes.shape[0] and block.shape[1] == removed.shape[1]:
            return None
        return build(
            genes, removed, block, torch.zeros(1, dtype=torch.long, device=dev), labels, max_genes
        )
    if not bool(present.all()):
        return None
    if kind == "delete":
        empty = torch.zeros(1, 0, dtype=torch.long, device=dev)
        return build(
            genes,
            pos.sort().values[None, :],
            empty,
            torch.zeros(1, dtype=torch.long, device=dev),
            labels,
            max_genes,
        )
    if len(targets) != 1:
        raise ValueError("inhibit/activate take one gene at a time")
    n = genes.shape[0]
    q = move_target(pos, n, kind, rank_shift)
    if bool(q[0] == pos[0]):
        return None
    return build(genes, pos[None, :], pos[None, :], q, labels, max_genes)
