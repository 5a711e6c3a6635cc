"""ispo: fast, exact in-silico perturbation and embeddings with Geneformer-family models.

The data path, one way: read -> validate -> tokenize -> batch -> model -> pool/compare -> write.

>>> import ispo
>>> adata = ispo.demo_adata(200)                       # synthetic, labelled as such
>>> model = ispo.load_model("gf-6L-10M-i2048", vocab=ispo.demo_vocab(), random_init=True)
>>> X = ispo.embed(adata, model)                        # adata.obsm["X_geneformer"]
"""

from ispo.data.demo import demo_adata, demo_vocab
from ispo.data.read import read_input
from ispo.data.vocab import Vocab, load_vocab
from ispo.errors import IspoError
from ispo.evaluate.run import evaluate
from ispo.infer.embed import embed, embed_cells
from ispo.model.load import GeneformerModel, load_model
from ispo.model.presets import PRESETS, GeneformerConfig
from ispo.perturb.engine import CellStates, perturb
from ispo.perturb.stats import perturb_stats
from ispo.tokenize import TokenizedCells, tokenize

__all__ = [
    "PRESETS", "CellStates", "GeneformerConfig", "GeneformerModel", "IspoError", "TokenizedCells", "Vocab",
    "demo_adata", "demo_vocab", "embed", "embed_cells", "evaluate", "load_model", "load_vocab",
    "perturb", "perturb_stats", "read_input", "tokenize",
]
