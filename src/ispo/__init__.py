"""ispo: fast, exact in-silico perturbation and embeddings with Geneformer-family models.

The data path, one way: read -> validate -> tokenize -> batch -> model -> pool/compare -> write.

>>> import ispo
>>> adata = ispo.demo_adata(200)                       # synthetic, labelled as such
>>> model = ispo.load_model("gf-6L-10M-i2048", vocab=ispo.demo_vocab(), random_init=True)
>>> X = ispo.embed(adata, model)                        # adata.obsm["X_geneformer"]
"""

from ispo.embedding.embed import embed, embed_cells
from ispo.errors import IspoError
from ispo.evaluation.run import evaluate
from ispo.io.demo import demo_adata, demo_vocab
from ispo.io.read import read_input
from ispo.io.vocab import Vocab, load_vocab
from ispo.model.load import GeneformerModel, load_model
from ispo.model.presets import PRESETS, GeneformerConfig
from ispo.perturbation.engine import perturb
from ispo.perturbation.options import CellStates
from ispo.perturbation.stats import perturb_stats
from ispo.settings import RunSettings
from ispo.tokens import TokenizedCells, tokenize
from ispo.training import DataOptions, TrainSettings, finetune

__all__ = [
    "PRESETS",
    "CellStates",
    "DataOptions",
    "GeneformerConfig",
    "GeneformerModel",
    "IspoError",
    "RunSettings",
    "TokenizedCells",
    "TrainSettings",
    "Vocab",
    "demo_adata",
    "demo_vocab",
    "embed",
    "embed_cells",
    "evaluate",
    "finetune",
    "load_model",
    "load_vocab",
    "perturb",
    "perturb_stats",
    "read_input",
    "tokenize",
]
