"""Checks on raw counts: Geneformer ranks raw UMI counts, so anything else is refused early."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ispo.errors import IspoError


def check_counts(chunk: sp.csr_matrix, where: str = "X") -> None:
    """Raise a one-line error unless ``chunk`` holds finite, non-negative whole numbers."""
    data = chunk.data
    if data.size == 0:
        return
    if not np.isfinite(data).all():
        raise IspoError(
            f"{where} contains NaN or infinite values: give raw integer counts "
            "(e.g. --layer counts)"
        )
    if (data < 0).any():
        raise IspoError(
            f"{where} contains negative values: give raw integer counts, not "
            "scaled or log data (e.g. --layer counts)"
        )
    if np.issubdtype(data.dtype, np.floating) and (data != np.trunc(data)).any():
        raise IspoError(
            f"{where} contains non-integer values (normalised or log data?): give "
            "raw integer counts (e.g. --layer counts)"
        )


def check_unique_names(names: pd.Index, what: str = "cell") -> None:
    """Outputs are keyed by cell id: refuse duplicate cell names with one clear line."""
    if not names.is_unique:
        dup = names[names.duplicated()]
        raise IspoError(
            f"{len(dup):,} duplicate {what} name(s) (e.g. {str(dup[0])!r}): outputs "
            "are keyed by cell id; make them unique first "
            "(AnnData.obs_names_make_unique())"
        )
