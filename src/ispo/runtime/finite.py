"""The check that no NaN or Inf reaches a result: embeddings, cosines, shifts.

A model that overflows its precision (fp16 on long cells, large activations) or runs on damaged
hardware gives NaN or Inf without any error; written out, they would poison every statistic
downstream. Every batch's results are recorded here as they are computed: one ``isfinite``
reduction per tensor, kept on the device, so a GPU is not stopped once per batch. They are
read back together where the caller reads its results back anyway (:meth:`FiniteCheck.check`,
once per embedded unit or perturbed shard), and a bad batch stops the run with one line naming
the cells, before anything of it is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ispo.errors import IspoError

HALF = (torch.float16, torch.bfloat16)


class NonFiniteError(IspoError):
    """A result holds NaN or Inf; ``rows`` are the input rows of the cells concerned."""

    def __init__(self, message: str, rows: list[int]) -> None:
        super().__init__(message)
        self.rows = rows


def _cause(dtype: torch.dtype) -> str:
    """The likely cause and the fix, for values computed in ``dtype``."""
    if dtype in HALF:
        name = str(dtype).removeprefix("torch.")
        return (
            f"computed in {name}, the model most likely overflowed its precision: rerun with "
            "--precision fp32 (or bf16, which has fp32's range)"
        )
    return "computed in float32: check the model's weights and the input's counts"


def describe(what: str, rows: np.ndarray, dtype: torch.dtype) -> str:
    """The one line of a non-finite result: what, which cells (their sorted, unique input
    rows), why."""
    shown = ", ".join(str(int(r)) for r in rows[:8]) + (", ..." if len(rows) > 8 else "")
    return (
        f"{what} of {len(rows)} cell{'s' * (len(rows) != 1)} (input rows {shown}) are not "
        f"finite (NaN or Inf); {_cause(dtype)}"
    )


@dataclass
class FiniteCheck:
    """Per-row finiteness of the results of a run's batches, checked lazily.

    :meth:`add` records one tensor of a batch (rows first) with the input row of the cell each
    of its rows belongs to; :meth:`check` reads every recorded flag back at once and raises
    :class:`NonFiniteError` naming every cell with a NaN or Inf in any of them. With
    ``strict=False`` nothing is raised: for a caller that reports non-finite results itself
    (``ispo tune`` measures such a setting and marks it infeasible).
    """

    strict: bool = True
    _pending: list[tuple[str, torch.Tensor, np.ndarray, torch.dtype]] = field(default_factory=list)

    def add(
        self,
        what: str,
        values: torch.Tensor,
        rows: np.ndarray,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Record ``values`` (rows first) of the cells at input ``rows`` (one per row);
        ``dtype``: what they were computed in (default: their own)."""
        ok = torch.isfinite(values)
        if ok.dim() > 1:
            ok = ok.flatten(1).all(1)
        self._pending.append((what, ok, rows, dtype or values.dtype))

    def check(self) -> None:
        """Raise :class:`NonFiniteError` if any recorded value was NaN or Inf; forget them."""
        pending, self._pending = self._pending, []
        if not pending or not self.strict:
            return
        ok = torch.cat([flags.reshape(-1) for _, flags, _, _ in pending]).cpu().numpy()
        if ok.all():
            return
        whats: list[str] = []
        bad_rows, at = [], 0
        for what, flags, rows, dtype in pending:
            part, at = ok[at : at + len(flags)], at + len(flags)
            if not part.all():
                whats += [what] * (what not in whats)
                bad_rows.append(np.asarray(rows)[~part])
                bad_dtype = dtype
        bad = np.unique(np.concatenate(bad_rows))
        what = " and ".join([", ".join(whats[:-1]), whats[-1]] if len(whats) > 1 else whats)
        raise NonFiniteError(describe(what, bad, bad_dtype), bad.tolist())
