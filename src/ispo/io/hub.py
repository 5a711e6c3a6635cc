"""Models and dictionaries by their Hugging Face hub name, through ``huggingface_hub``.

``--model`` and ``--vocab`` take, besides a local folder (and, for ``--model``, a preset), a
folder of a hub repository, spelled ``OWNER/NAME[/FOLDER][@REVISION]`` (the revision may also
follow the repository: ``OWNER/NAME@REVISION/FOLDER``; ``hf://`` in front is accepted), e.g.
``ctheodoris/Geneformer/Geneformer-V1-10M`` or ``ctheodoris/Geneformer/Geneformer-V2-104M@abc1``.
Geneformer's dictionaries in that repository have short names: ``--vocab geneformer-v1``
(``geneformer/gene_dictionaries_30m``, the 30M corpus) and ``geneformer-v2``
(``geneformer``, the 104M corpus).

Files come from ``huggingface_hub``'s cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), downloaded
there first when online; with ``HF_HUB_OFFLINE=1`` only the cache is read. Both variables are
read at each call, not once at import. What was resolved, down to the commit hash, is returned
(:class:`HubFolder`) and recorded in every output's metadata, so a run names exactly the weights
it used.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ispo.errors import IspoError

GENEFORMER_REPO = "ctheodoris/Geneformer"
# Geneformer's dictionary folders in its repository, and the suffix of their file names
DICTIONARY_FOLDERS = {"geneformer/gene_dictionaries_30m": "gc30M", "geneformer": "gc104M"}
DICTIONARY_NAMES = {
    "geneformer-v1": "geneformer/gene_dictionaries_30m",
    "geneformer-v2": "geneformer",
}
MODEL_FILES = ("config.json", ("model.safetensors", "pytorch_model.bin"))
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SPEC = re.compile(
    rf"^(?:hf://)?(?P<repo>{_PART}/{_PART})(?:@(?P<rev1>[^/@]+))?"
    rf"(?:/(?P<folder>[^@]+?))?/?(?:@(?P<rev2>[^@]+))?$"
)


@dataclass(frozen=True)
class HubName:
    """A folder of a hub repository at a revision (None: the default branch)."""

    repo: str
    folder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.repo}/{self.folder}{at}" if self.folder else f"{self.repo}{at}"


@dataclass(frozen=True)
class HubFolder:
    """A hub folder resolved to the cache: where it is, and the commit it came from."""

    name: HubName
    path: Path
    commit: str

    def pinned(self) -> str:
        """The name with the resolved commit, what a rerun gives to get the same files."""
        return str(HubName(self.name.repo, self.name.folder, self.commit))

    def metadata(self) -> dict[str, str | None]:
        n = self.name
        return {"repo": n.repo, "folder": n.folder, "revision": n.revision, "commit": self.commit}


def parse(spec: str) -> HubName | None:
    """The hub name ``spec`` spells (see the module docstring), or None when it is not one:
    also when it reads as a local path (``/``, ``.`` or ``~`` first, or a first folder that
    exists here: a mistyped ``runs/ckpt`` is a missing folder, not a hub repository)."""
    if spec.startswith(("/", ".", "~")) or Path(spec.split("/")[0]).is_dir():
        return None
    if spec.lower() in DICTIONARY_NAMES or spec.split("@")[0].lower() in DICTIONARY_NAMES:
        alias, _, rev = spec.partition("@")
        return HubName(GENEFORMER_REPO, DICTIONARY_NAMES[alias.lower()], rev or None)
    m = _SPEC.match(spec)
    if m is None or (m["rev1"] and m["rev2"]):
        return None
    return HubName(m["repo"], (m["folder"] or "").strip("/"), m["rev1"] or m["rev2"])


def _environment() -> tuple[str, bool]:
    """(cache folder, offline), from the environment as it is now."""
    home = os.environ.get("HF_HOME") or os.path.join(Path.home(), ".cache", "huggingface")
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
    flags = (os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    offline = any(v.strip().upper() in ("1", "ON", "YES", "TRUE") for v in flags)
    return cache, offline


def fetch(name: HubName, files: tuple[str | tuple[str, ...], ...], what: str) -> HubFolder:
    """The folder ``name`` with ``files`` (a tuple among them: the first one the repository
    has), from the cache or downloaded into it; one line naming the fix when it cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError

    cache, offline = _environment()
    got = []
    for wanted in files:
        choices = wanted if isinstance(wanted, tuple) else (wanted,)
        for i, file in enumerate(choices):
            path = f"{name.folder}/{file}" if name.folder else file
            try:
                kw = dict(revision=name.revision, cache_dir=cache, local_files_only=offline)
                got.append(Path(hf_hub_download(name.repo, path, **kw)))
                break
            except EntryNotFoundError as exc:  # not in the cache, or not in the repository
                if i + 1 == len(choices):
                    raise _missing(name, what, path, cache, offline, exc) from exc
            except (HfHubHTTPError, HFValidationError, OSError, ValueError) as exc:
                raise _missing(name, what, path, cache, offline, exc) from exc
    snapshot = _snapshot_of(got[0])
    return HubFolder(name, snapshot / name.folder, snapshot.name)


def _snapshot_of(file: Path) -> Path:
    """The ``snapshots/<commit>`` folder a cached file lies in (huggingface_hub's layout)."""
    for parent in file.parents:
        if parent.parent.name == "snapshots":
            return parent
    raise IspoError(f"{file} is not in a Hugging Face cache snapshot: check HF_HUB_CACHE")


def _missing(
    name: HubName, what: str, path: str, cache: str, offline: bool, exc: Exception
) -> IspoError:
    """The one line for a hub name that cannot be had."""
    if offline:
        get = f"hf download {name.repo}" + (f" --include '{name.folder}/*'" if name.folder else "")
        return IspoError(
            f"{what} {name} is not a local folder, and {name.repo}/{path} is not in the Hugging "
            f"Face cache {cache} while HF_HUB_OFFLINE is set: download it once online ({get}), "
            "point HF_HUB_CACHE at a cache that has it, or give a local folder"
        )
    detail = " ".join(str(exc).split())[:160]
    return IspoError(
        f"{what} {name} is not a local folder, and {name.repo}/{path} could not be fetched from "
        f"the Hugging Face hub ({type(exc).__name__}: {detail}): check the name, the revision "
        "and the network (or set HF_HUB_OFFLINE=1 to use the cache)"
    )


def model_folder(name: HubName) -> HubFolder:
    """A model checkpoint folder (config.json and its weights) of the hub."""
    return fetch(name, MODEL_FILES, "--model")


def dictionary_folder(name: HubName, files: tuple[str, ...]) -> HubFolder:
    """A dictionary folder of the hub holding ``files`` (Geneformer's four ``.pkl`` names,
    which its own repository spells with its corpus: ``token_dictionary_gc104M.pkl``)."""
    suffix = DICTIONARY_FOLDERS.get(name.folder) if name.repo == GENEFORMER_REPO else None
    names = tuple(f"{Path(f).stem}_{suffix}.pkl" if suffix else f for f in files)
    return fetch(name, names, "--vocab")
