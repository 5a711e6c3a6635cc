"""Geneformer vocabularies: the four dictionaries that tie genes to tokens.

A vocabulary directory has Geneformer's layout: ``token_dictionary.pkl`` (Ensembl id -> token),
``gene_median_dictionary.pkl`` (Ensembl id -> nonzero median used to normalise counts),
``gene_name_id_dict.pkl`` (symbol -> Ensembl id) and ``ensembl_mapping_dict.pkl`` (id or symbol ->
canonical Ensembl id, used to merge duplicates). A pickle can name any function to call while it
loads, so ispo reads these with :class:`PlainUnpickler`, which builds only plain containers,
strings, numbers and NumPy numeric scalars and refuses anything else; it never writes pickles.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ispo.errors import IspoError

FILES = {
    "token_dict": "token_dictionary.pkl",
    "median_dict": "gene_median_dictionary.pkl",
    "name_id_dict": "gene_name_id_dict.pkl",
    "mapping_dict": "ensembl_mapping_dict.pkl",
}
PAD, MASK, CLS, EOS = "<pad>", "<mask>", "<cls>", "<eos>"


@dataclass(frozen=True)
class Vocab:
    """Token, median, symbol and id-mapping dictionaries of one Geneformer version.

    ``version`` is 2 when the dictionary has ``<cls>``/``<eos>`` (V2 adds them around each cell),
    else 1. ``max_input`` is the model input size the tokenizer truncates to.
    """

    token_dict: dict[str, int]
    median_dict: dict[str, float]
    name_id_dict: dict[str, str]
    mapping_dict: dict[str, str]
    source: str = "memory"
    id_to_symbol: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id_to_symbol", {v: k for k, v in self.name_id_dict.items()})

    @property
    def version(self) -> int:
        return 2 if CLS in self.token_dict and EOS in self.token_dict else 1

    @property
    def size(self) -> int:
        return max(self.token_dict.values()) + 1

    @property
    def max_input(self) -> int:
        return 4096 if self.version == 2 else 2048

    @property
    def cls_id(self) -> int | None:
        return self.token_dict.get(CLS)

    @property
    def eos_id(self) -> int | None:
        return self.token_dict.get(EOS)

    def id_of_token(self) -> np.ndarray:
        """Array mapping token -> Ensembl id (special tokens keep their own names)."""
        out = np.empty(self.size, dtype=object)
        for gene, tok in self.token_dict.items():
            out[tok] = gene
        return out

    def resolve_gene(self, name: str) -> str:
        """Ensembl id of a user-given gene (symbol or id), or a clear error."""
        if name in self.token_dict:
            return name
        gid = self.name_id_dict.get(name) or self.mapping_dict.get(name.upper())
        if gid is None or gid not in self.token_dict:
            raise IspoError(
                f"gene {name!r} is not in the vocabulary ({self.source}): "
                "give an Ensembl id or symbol the model knows"
            )
        return gid

    @cached_property
    def canonical_lookup(self) -> tuple[pd.Index, np.ndarray, np.ndarray]:
        """``ensembl_mapping_dict`` as arrays: (its keys as an Index, the canonical id of each
        key, the token of that id or -1 when it cannot be tokenized). Mapping a data set's genes
        is then one hashed ``get_indexer`` in C instead of a Python loop per gene (the
        tokenizer's fixed cost per file)."""
        keys = pd.Index(list(self.mapping_dict), dtype=object)
        canon = np.array(list(self.mapping_dict.values()), dtype=object)
        token = np.array(
            [self.token_dict.get(c, -1) if c in self.median_dict else -1 for c in canon],
            dtype=np.int64,
        )
        return keys, canon, token

    @cached_property
    def median_of_token(self) -> np.ndarray:
        """Normalisation median per token id (NaN for tokens that are not genes)."""
        out = np.full(self.size, np.nan)
        for gene, tok in self.token_dict.items():
            if gene in self.median_dict:
                out[tok] = self.median_dict[gene]
        return out

    def symbol(self, gene_id: str) -> str:
        return self.id_to_symbol.get(gene_id, gene_id)


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asked for something other than plain data (a function, a class to call)."""


_BUILTINS = {"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool"}
_NUMPY_SCALAR = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}
_NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


def _numeric(dtype: object) -> np.dtype:
    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMERIC_KINDS:
        raise RefusedPickle(f"a NumPy scalar of dtype {dtype!r}, not a number")
    return dtype


class PlainUnpickler(pickle.Unpickler):
    """Builds plain containers, strings, numbers and NumPy numeric scalars; nothing else.

    A pickle runs code by naming a callable (``os.system``, a class) that the loader looks
    up with :meth:`find_class` and calls. Here the only names that resolve are builtin
    container and number types, and NumPy's scalar and dtype constructors, wrapped so they
    accept numeric dtypes only (Geneformer's median dictionary holds ``np.float64`` values,
    its V1 token dictionary some ``np.int16``). Everything else raises :class:`RefusedPickle`
    before anything is called.
    """

    def find_class(self, module: str, name: str) -> object:
        if module == "builtins" and name in _BUILTINS:
            return super().find_class(module, name)
        if (module, name) in _NUMPY_SCALAR:
            scalar = super().find_class(module, name)
            return lambda dtype, *data: scalar(_numeric(dtype), *data)
        if module == "numpy" and name == "dtype":
            return lambda spec, *args: _numeric(np.dtype(spec if isinstance(spec, str) else "O"))
        raise RefusedPickle(f"{module}.{name}")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            obj = PlainUnpickler(fh).load()
    except RefusedPickle as exc:
        raise IspoError(
            f"vocabulary file {path} asks to run {exc} while loading, which is not plain data: "
            "refused; restore the file from the model's release"
        ) from None
    except Exception as exc:  # corrupt or truncated pickle: name the file
        raise IspoError(
            f"vocabulary file {path} is unreadable ({type(exc).__name__}): "
            "restore it from the model's release"
        ) from exc
    if not isinstance(obj, dict):
        raise IspoError(
            f"vocabulary file {path} holds a {type(obj).__name__}, not a dict: "
            "point --vocab at a Geneformer dictionary directory"
        )
    return obj


def _dictionary_file(root: Path, name: str) -> Path | None:
    """``root/name``, or the one ``<stem>_<corpus>.pkl`` there (Geneformer's own file names,
    e.g. ``token_dictionary_gc104M.pkl``)."""
    if (root / name).is_file():
        return root / name
    found = sorted(root.glob(f"{Path(name).stem}_*.pkl"))
    return found[0] if len(found) == 1 else None


def load_vocab(path: str | Path) -> Vocab:
    """Read a Geneformer dictionary directory (see module docstring for the layout): a local
    folder, or a folder of a Hugging Face hub repository (``geneformer-v1``, ``geneformer-v2``
    or ``OWNER/NAME/FOLDER[@REVISION]``: :mod:`ispo.io.hub`)."""
    if isinstance(path, Vocab):
        return path
    root, source = Path(path), str(path)
    if not root.is_dir():
        from ispo.io import hub

        name = hub.parse(str(path))
        if name is None:
            raise IspoError(
                f"vocabulary directory {root} does not exist: pass --vocab DIR "
                "with Geneformer's token/median/name/mapping dictionaries, or geneformer-v1 / "
                "geneformer-v2 (from the Hugging Face hub)"
            )
        folder = hub.dictionary_folder(name, tuple(FILES.values()))
        root, source = folder.path, folder.pinned()
    files = {key: _dictionary_file(root, name) for key, name in FILES.items()}
    missing = [FILES[key] for key, f in files.items() if f is None]
    if missing:
        raise IspoError(
            f"vocabulary directory {root} lacks {', '.join(missing)}: "
            "copy all four Geneformer dictionary files there"
        )
    dicts = {key: _read_pickle(f) for key, f in files.items()}
    dicts["token_dict"] = {str(k): int(v) for k, v in dicts["token_dict"].items()}
    dicts["median_dict"] = {str(k): float(v) for k, v in dicts["median_dict"].items()}
    if PAD not in dicts["token_dict"]:
        raise IspoError(
            f"{files['token_dict']} has no <pad> token: not a Geneformer token dictionary"
        )
    return Vocab(**dicts, source=source)
