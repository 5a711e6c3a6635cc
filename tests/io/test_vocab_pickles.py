"""Geneformer's dictionaries are pickles: ispo loads plain data from them and never runs code."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from ispo.errors import IspoError
from ispo.io.vocab import FILES, PAD, load_vocab

GENES = ["ENSG00000000003", "ENSG00000000005", "ENSG00000000419"]


def _plain_dicts() -> dict[str, dict]:
    """The four dictionaries as Geneformer writes them: NumPy scalars among plain values."""
    return {
        "token_dict": {PAD: 0, "<mask>": 1, **{g: np.int16(i + 2) for i, g in enumerate(GENES)}},
        "median_dict": {g: np.float64(1.5 + i) for i, g in enumerate(GENES)},
        "name_id_dict": {f"GENE{i}": g for i, g in enumerate(GENES)},
        "mapping_dict": {g: g for g in GENES},
    }


def _write(root: Path, dicts: dict[str, object]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for key, name in FILES.items():
        with open(root / name, "wb") as fh:
            pickle.dump(dicts[key], fh)
    return root


class _RunsACommand:
    """Unpickling this calls os.system: what a hostile dictionary would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_plain_dictionaries_with_numpy_scalars_load(tmp_path: Path) -> None:
    vocab = load_vocab(_write(tmp_path / "vocab", _plain_dicts()))
    assert vocab.token_dict[GENES[2]] == 4
    assert vocab.median_dict == {g: 1.5 + i for i, g in enumerate(GENES)}
    assert all(type(v) is float for v in vocab.median_dict.values())
    assert vocab.resolve_gene("GENE1") == GENES[1]


def test_a_pickle_that_would_run_a_command_is_refused_and_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with open(tmp_path / "probe.pkl", "wb") as fh:  # the attack works with plain pickle.load
        pickle.dump(_RunsACommand(tmp_path / "proof"), fh)
    with open(tmp_path / "probe.pkl", "rb") as fh:
        pickle.load(fh)
    assert (tmp_path / "proof").exists()

    dicts: dict[str, object] = dict(_plain_dicts())
    dicts["median_dict"] = {GENES[0]: _RunsACommand(marker)}
    root = _write(tmp_path / "hostile", dicts)
    with pytest.raises(
        IspoError, match=r"gene_median_dictionary\.pkl asks to run .*system.*refused"
    ):
        load_vocab(root)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value",
    [np.array([1.0, 2.0]), np.str_("x"), np.datetime64("2020-01-01"), Path("/etc/passwd")],
    ids=["ndarray", "numpy-str", "datetime64", "path"],
)
def test_anything_but_plain_data_is_refused(tmp_path: Path, value: object) -> None:
    dicts: dict[str, object] = dict(_plain_dicts())
    dicts["mapping_dict"] = {GENES[0]: value}
    with pytest.raises(IspoError, match=r"ensembl_mapping_dict\.pkl asks to run .* refused"):
        load_vocab(_write(tmp_path / "vocab", dicts))
