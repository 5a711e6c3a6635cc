"""The perturb progress bar: perturbations done of a total shown before the first shard runs,
cells done beside it, moved after every batch.

Counting cells alone left the bar at ``0/3`` for a minute (a cell of 800 genes is 800
perturbations, many batches). The total up front comes from the scan (genes per selected cell,
:class:`ispo.perturbation.passes.InputScan`): each gene of the cell once with ``genes="all"``
(or an anchor), one perturbation per cell for a gene list. Perturbations that do not apply
(a gene already first when overexpressed, a cell lacking a listed gene) are only known once a
shard's perturbations are built, so the total is corrected then, shard by shard.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm


def expected_per_cell(genes_per_cell: np.ndarray, gene_list: bool) -> np.ndarray:
    """Perturbations a cell is expected to get: one per gene, or one for a gene list."""
    return np.ones_like(genes_per_cell) if gene_list else genes_per_cell


class PerturbProgress:
    """A tqdm bar in perturbations (tqdm shows their rate) for the shards ``expected``
    (shard -> expected perturbations, this process's), with the cells done in its postfix."""

    def __init__(
        self, expected: dict[int, int], n_cells: int, desc: str, disable: bool = False
    ) -> None:
        self.expected = expected
        self.n_cells, self.cells_done = n_cells, 0
        self.bar = tqdm(
            total=sum(expected.values()), unit="perturbation", desc=desc, disable=disable
        )
        self.shard: int | None = None
        self._postfix()

    def start(self, shard: int) -> None:
        """The next :meth:`built` is shard ``shard``'s."""
        self.shard = shard

    def built(self, n_rows: int) -> None:
        """The current shard has ``n_rows`` perturbations: the total is corrected to them."""
        if self.shard is not None:
            self.bar.total += n_rows - self.expected.pop(self.shard, 0)
            self.bar.refresh()

    def rows(self, n: int) -> None:
        """``n`` more perturbations ran (one batch)."""
        self.bar.update(n)

    def cells(self, n: int) -> None:
        """``n`` more cells are finished and written."""
        self.cells_done += n
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"cells {self.cells_done:,}/{self.n_cells:,}")

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> PerturbProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
