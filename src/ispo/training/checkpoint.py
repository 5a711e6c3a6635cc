"""Epoch checkpoints of a fine-tuning run: ``OUT.train/state.pt``, replaced whole after every
epoch (written to a temporary name, then renamed), so a run killed at any moment, even by
``kill -9``, resumes from its last finished epoch and ends with the weights an uninterrupted run
would have had. The folder goes once the result is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from ispo import faults
from ispo.errors import IspoError

log = logging.getLogger(__name__)


class EpochCheckpoint:
    """The resumable state of one run, keyed by a fingerprint of its input and options."""

    def __init__(self, out: Path, fingerprint: dict, *, resume: bool, overwrite: bool) -> None:
        self.folder = out.with_name(out.name + ".train")
        self.path = self.folder / "state.pt"
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))  # as stored
        if self.folder.exists() and not resume:
            if not overwrite:
                raise IspoError(
                    f"{self.folder} holds an unfinished run: pass --resume to continue it, "
                    "or --overwrite to start again"
                )
            shutil.rmtree(self.folder)

    def load(self) -> dict | None:
        """The last saved state, or None when there is none (a fresh start)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise IspoError(
                f"{self.path} is unreadable ({type(exc).__name__}): pass --overwrite to start again"
            ) from exc
        if state.get("fingerprint") != self.fingerprint:
            raise IspoError(
                f"{self.folder} was made with other options or data: rerun with the same "
                "options, or --overwrite to start again"
            )
        log.info("resuming after epoch %d from %s", state["epoch"], self.path)
        return state

    def save(self, state: dict) -> None:
        """Replace the saved state with ``state`` (atomically), then pass the fault seam."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{self.path.name}.tmp"
        torch.save({**state, "fingerprint": self.fingerprint}, tmp)
        os.replace(tmp, self.path)
        faults.epoch_saved()  # ISPO_FAULT: a kill between epochs

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
