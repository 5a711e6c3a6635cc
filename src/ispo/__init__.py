"""ispo: fast, exact in-silico perturbation and embeddings with Geneformer-family models.

The data path, one way: read -> validate -> tokenize -> batch -> model -> pool/compare -> write.

>>> import ispo
>>> adata = ispo.demo_adata(200)                       # synthetic, labelled as such
>>> model = ispo.load_model("gf-6L-10M-i2048", vocab=ispo.demo_vocab(), random_init=True)
>>> X = ispo.embed(adata, model)                        # adata.obsm["X_geneformer"]
"""

from importlib import import_module
from typing import TYPE_CHECKING

# The public names, each from the module that defines it. They are imported on first use
# (PEP 562), so `import ispo` and the `ispo` command start without torch, transformers,
# anndata or pandas: `ispo --help` in well under a second (issue 25).
_WHERE = {
    "embed": "ispo.embedding.embed",
    "embed_cells": "ispo.embedding.embed",
    "IspoError": "ispo.errors",
    "evaluate": "ispo.evaluation.run",
    "demo_adata": "ispo.io.demo",
    "demo_vocab": "ispo.io.demo",
    "read_input": "ispo.io.read",
    "Vocab": "ispo.io.vocab",
    "load_vocab": "ispo.io.vocab",
    "GeneformerModel": "ispo.model.load",
    "load_model": "ispo.model.load",
    "PRESETS": "ispo.model.presets",
    "GeneformerConfig": "ispo.model.presets",
    "perturb": "ispo.perturbation.engine",
    "CellStates": "ispo.perturbation.options",
    "perturb_stats": "ispo.perturbation.stats",
    "RunSettings": "ispo.settings",
    "TokenizedCells": "ispo.tokens",
    "tokenize": "ispo.tokens",
    "DataOptions": "ispo.training",
    "TrainSettings": "ispo.training",
    "finetune": "ispo.training",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
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


def __getattr__(name: str):
    """``ispo.embed`` and the other public names, imported when first asked for (and the
    subpackages, ``ispo.tokens``, as an eager ``import ispo`` used to make them available)."""
    if name not in _WHERE:
        try:
            return import_module(f"ispo.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"ispo.{name}":
                raise
            raise AttributeError(f"module 'ispo' has no attribute {name!r}") from None
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value  # asked once: a plain attribute from then on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])


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
