"""Statistics over in-silico perturbation results (Geneformer's ``InSilicoPerturberStats``).

The engine writes one row per (cell, perturbation); :func:`perturb_stats` turns that into one row
per perturbed gene (or per perturbed/affected gene pair). One module per mode: Geneformer's
:mod:`.aggregate`, :mod:`.goal_state_shift`, :mod:`.vs_null`, :mod:`.mixture_model`,
:mod:`.aggregate_gene_shifts`, and :mod:`.class_prob` for classifier checkpoints. The statistical
tests are in :mod:`.tests`, the within-cell ("paired") analysis that goal_state_shift and
class_prob share in :mod:`.paired`, the reading of the results in :mod:`.inputs`, Geneformer's
column names in :mod:`.geneformer_names`, the entry in :mod:`.api`; :mod:`.simulate` makes
tables with known effects to check the tests' calibration.

Every output carries gene ids and symbols and records how it was made in ``df.attrs["ispo_stats"]``;
``columns="geneformer"`` renames (and, for Geneformer's tests, orders) them as Geneformer does.
"""

from ispo.perturbation.stats.api import perturb_stats, write_stats
from ispo.perturbation.stats.options import MODES

__all__ = ["MODES", "perturb_stats", "write_stats"]
