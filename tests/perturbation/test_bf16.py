"""perturb in bf16 against the fp32 run (itself equal to the reference within 1e-5): the fast
path on bf16 hardware (fused oneDNN linear layers on AVX-512-bf16/AMX CPUs, bf16 SDPA, pooling
and cosines in bf16 with fp32 sums) gives the same numbers within bf16's precision."""

from __future__ import annotations

import numpy as np
import pytest

from ispo.perturbation.engine import perturb

# bf16 keeps 8 significant bits: unit roundoff 2**-9 ~ 2e-3 per rounding. A cosine is a ratio
# of sums whose rounding errors mostly cancel (original and perturbed run the same rounded
# weights), so the values move by a few roundoffs at most, not by one per layer. Measured on
# these tiny random models (3 layers, hidden 32, init std 0.2: far rougher than Geneformer), V1
# and V2: cos_sim/cell_cos_sim max abs diff <= 2.9e-3, per-gene cosines <= 6.4e-3, means <=
# 8e-4. Tolerances of about 3x that leave room for other CPUs' kernels yet fail at once if a
# bf16 path broke (a wrong gather or pooling moves values by 0.1-1).
MAX_DIFF, GENE_DIFF, MEAN_DIFF = 1e-2, 2e-2, 2e-3


@pytest.mark.parametrize("kind", ["delete", "overexpress"])
def test_bf16_matches_fp32(setup, kind):
    kw = dict(genes="all", perturb_type=kind, emb_mode="cell_and_gene")
    ref = perturb(setup.adata, setup.model, precision="fp32", **kw)
    got = perturb(setup.adata, setup.model, precision="bf16", **kw)
    assert list(got["perturbed_ids"]) == list(ref["perturbed_ids"])
    for col in ("cos_sim", "cell_cos_sim"):
        diff = np.abs(got[col].to_numpy() - ref[col].to_numpy())
        assert diff.max() < MAX_DIFF and diff.mean() < MEAN_DIFF, col
    genes = np.abs(got.attrs["gene_table"]["cos_sim"] - ref.attrs["gene_table"]["cos_sim"])
    assert genes.max() < GENE_DIFF and genes.mean() < MEAN_DIFF
