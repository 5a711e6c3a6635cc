"""What a perturbation run is asked to do: the perturbation types, the cell states, and the
checks of option combinations (one clear line per mistake, before anything runs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ispo.errors import IspoError
from ispo.io.vocab import Vocab

EmbMode = Literal["cell", "cell_and_gene", "cls", "cls_and_gene"]
EMB_MODES = ("cell", "cell_and_gene", "cls", "cls_and_gene")
PERTURB_TYPES = ("delete", "overexpress", "inhibit", "activate")


def uses_cls(emb_mode: str) -> bool:
    """The cell-level value and the state shifts use the ``<cls>`` state (V2 ``cls`` modes)."""
    return emb_mode.startswith("cls")


def keeps_genes(emb_mode: str) -> bool:
    """The run also keeps each (perturbed, affected gene) cosine (the ``*_and_gene`` modes)."""
    return emb_mode.endswith("_and_gene")


@dataclass(frozen=True)
class CellStates:
    """Which cells to perturb (``start_state``) and which states to measure shifts toward."""

    state_key: str
    start_state: str
    goal_state: str
    alt_states: tuple[str, ...] = ()

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.goal_state, *self.alt_states)

    @classmethod
    def parse(cls, spec: CellStates | dict | None) -> CellStates | None:
        if spec is None or isinstance(spec, CellStates):
            return spec
        try:
            return cls(
                spec["state_key"],
                str(spec["start_state"]),
                str(spec["goal_state"]),
                tuple(str(s) for s in spec.get("alt_states") or ()),
            )
        except KeyError as exc:
            raise IspoError(
                f"cell_states lacks {exc.args[0]!r}: give state_key, start_state, "
                "goal_state (and optionally alt_states)"
            ) from exc


def check_options(
    vocab: Vocab, genes, perturb_type, rank_shift, anchor_gene, combos, emb_mode
) -> tuple[torch.Tensor | None, int | None]:
    """Validate option combinations; returns (target tokens or None, anchor token or None)."""
    if perturb_type not in PERTURB_TYPES:
        raise IspoError(
            f"perturb_type must be one of {', '.join(PERTURB_TYPES)}, not {perturb_type!r}"
        )
    if rank_shift not in (1, 2, 3):
        raise IspoError(f"rank_shift must be 1, 2 or 3 quartiles, not {rank_shift}")
    if emb_mode not in EMB_MODES:
        raise IspoError(f"emb_mode must be one of {', '.join(EMB_MODES)}, not {emb_mode!r}")
    if uses_cls(emb_mode) and vocab.version != 2:
        fallback = emb_mode.replace("cls", "cell")
        raise IspoError(
            f"emb_mode {emb_mode!r} needs a V2 vocabulary (with <cls>): use {fallback!r} for V1"
        )
    if combos not in (0, 1):
        raise IspoError(f"combos must be 0 or 1 (pairs with the anchor gene), not {combos}")
    if combos == 1 and anchor_gene is None:
        raise IspoError("combos=1 needs an anchor gene (--anchor-gene)")
    if anchor_gene is not None:
        if genes != "all":
            raise IspoError(
                "an anchor gene pairs with every gene of the cell: use genes='all' "
                "with --anchor-gene, or a gene list without it"
            )
        if perturb_type not in ("delete", "overexpress"):
            raise IspoError(
                f"anchor pairs support delete and overexpress, not {perturb_type!r}: pass "
                "--perturb-type delete or overexpress with --anchor-gene"
            )
        return None, vocab.token_dict[vocab.resolve_gene(anchor_gene)]
    if isinstance(genes, str):
        if genes == "all":
            return None, None
        genes = [g for g in genes.split(",") if g]
    if not genes:
        raise IspoError("no gene to perturb: give 'all' or a list of genes")
    if perturb_type in ("inhibit", "activate") and len(genes) > 1:
        raise IspoError("inhibit/activate take one gene (or 'all'): run one gene at a time")
    ids = [vocab.resolve_gene(g) for g in genes]
    if len(set(ids)) != len(ids):
        raise IspoError(f"the gene list names a gene twice ({', '.join(genes)}): list each once")
    return torch.tensor([vocab.token_dict[g] for g in ids], dtype=torch.long), None


def wanted_tokens(targets: torch.Tensor | None, anchor: int | None, perturb_type: str) -> list[int]:
    """Tokens some selected cell must express (a gene to delete or move, an anchor)."""
    if anchor is not None:
        return [anchor]
    return [] if targets is None or perturb_type == "overexpress" else targets.tolist()
