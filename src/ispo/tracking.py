"""Optional experiment tracking (Weights & Biases, MLflow) behind one small interface.

Nothing here is required: wandb and mlflow are imported only when asked for, and when tracking
is off (or the package is missing) a no-op tracker takes the calls, so commands never branch on
it. Any command (benchmark, embed, perturb, tune) can use it::

    with make_tracker(wandb=True, project="ispo", run_name="bench", config=cfg) as tr:
        tr.log({"fast/cells_per_s": 812.0})
        tr.summary({"speedup": 9.1})
        tr.log_artifact(["runs/bench/results.json"], name="results", type="results")

wandb honours ``WANDB_MODE`` (``offline`` keeps everything on disk, ``disabled`` makes it a
no-op) and ``WANDB_DIR``. MLflow is used when ``MLFLOW_TRACKING_URI`` is set.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from types import TracebackType
from typing import Any

log = logging.getLogger(__name__)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries (bools as 0/1); trackers reject None, strings and NaN."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v) if isinstance(v, float) else v
    return out


def _as_list(paths: str | Path | list) -> list:
    return list(paths) if isinstance(paths, (list, tuple)) else [paths]


class Tracker:
    """The no-op tracker; subclasses send the calls somewhere."""

    name = "none"

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Record metrics as the run goes (non-numeric values are dropped)."""

    def summary(self, values: dict[str, Any]) -> None:
        """Record final values of the run."""

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Record a table (e.g. the benchmark's results)."""

    def log_artifact(self, paths: str | Path | list, *, name: str, type: str) -> None:
        """Attach files or folders (one path or a list) to the run as one artifact."""

    def finish(self) -> None:
        """Close the run."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish()

    @property
    def active(self) -> bool:
        return False


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, wandb: Any, run: Any) -> None:
        self._wandb, self._run = wandb, run

    @property
    def active(self) -> bool:
        return True

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = _scalars(metrics)
        if values:
            self._run.log(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if v is not None:
                self._run.summary[k] = v

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        data = [["" if v is None else v for v in r] for r in rows]
        self._run.log({key: self._wandb.Table(columns=columns, data=data)})

    def log_artifact(self, paths: str | Path | list, *, name: str, type: str) -> None:
        art = self._wandb.Artifact(name=name, type=type)
        for path in map(Path, _as_list(paths)):
            if path.is_dir():
                art.add_dir(str(path), name=path.name)
            else:
                art.add_file(str(path))
        self._run.log_artifact(art)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, mlflow: Any) -> None:
        self._mlflow = mlflow
        self._open = True

    @property
    def active(self) -> bool:
        return True

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {k.replace("+", "_plus_"): v for k, v in _scalars(metrics).items()}
        if values:
            self._mlflow.log_metrics(values, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self.log(values)

    def log_artifact(self, paths: str | Path | list, *, name: str, type: str) -> None:
        for path in map(Path, _as_list(paths)):
            if path.is_dir():
                self._mlflow.log_artifacts(str(path), artifact_path=f"{name}/{path.name}")
            else:
                self._mlflow.log_artifact(str(path), artifact_path=name)

    def finish(self) -> None:
        if self._open:
            self._mlflow.end_run()
            self._open = False


class MultiTracker(Tracker):
    """Sends every call to each of several trackers."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers
        self.name = "+".join(t.name for t in trackers)

    @property
    def active(self) -> bool:
        return any(t.active for t in self.trackers)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        for t in self.trackers:
            t.log(metrics, step)

    def summary(self, values: dict[str, Any]) -> None:
        for t in self.trackers:
            t.summary(values)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        for t in self.trackers:
            t.log_table(key, columns, rows)

    def log_artifact(self, paths: str | Path | list, *, name: str, type: str) -> None:
        for t in self.trackers:
            t.log_artifact(paths, name=name, type=type)

    def finish(self) -> None:
        for t in self.trackers:
            t.finish()


def _wandb_tracker(
    project: str,
    run_name: str | None,
    config: dict | None,
    dir: str | Path | None,
    tags: list[str] | None,
) -> Tracker | None:
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        log.info("wandb: WANDB_MODE=disabled, not tracking")
        return None
    try:
        import wandb
    except ImportError:
        log.warning(
            "wandb tracking asked for but wandb is not installed (pip install wandb); "
            "continuing without it"
        )
        return None
    kwargs: dict[str, Any] = {
        "project": project,
        "name": run_name,
        "config": config or {},
        "tags": tags,
    }
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
        kwargs["dir"] = str(dir)
    try:
        run = wandb.init(**kwargs)
    except Exception as exc:  # no login, no network: tracking must never break the run
        log.warning(
            "wandb: could not start a run (%s: %s); set WANDB_MODE=offline to track "
            "offline; continuing without it",
            type(exc).__name__,
            str(exc)[:200],
        )
        return None
    log.info(
        "wandb: tracking to project %r (mode %s)", project, os.environ.get("WANDB_MODE", "online")
    )
    return WandbTracker(wandb, run)


def _mlflow_tracker(project: str, run_name: str | None, config: dict | None) -> Tracker | None:
    try:
        import mlflow
    except ImportError:
        log.warning(
            "MLFLOW_TRACKING_URI is set but mlflow is not installed; not tracking to MLflow"
        )
        return None
    try:
        mlflow.set_experiment(project)
        mlflow.start_run(run_name=run_name)
        if config:
            mlflow.log_params({k: str(v)[:250] for k, v in _flatten(config).items()})
    except Exception as exc:
        log.warning(
            "mlflow: could not start a run (%s: %s); continuing without it",
            type(exc).__name__,
            str(exc)[:200],
        )
        return None
    return MlflowTracker(mlflow)


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def make_tracker(
    *,
    wandb: bool = False,
    project: str = "ispo",
    run_name: str | None = None,
    config: dict | None = None,
    dir: str | Path | None = None,
    tags: list[str] | None = None,
    mlflow: bool | None = None,
) -> Tracker:
    """A tracker for this run: wandb when ``wandb=True``, MLflow when ``MLFLOW_TRACKING_URI`` is
    set (or ``mlflow=True``), both, or the no-op :class:`Tracker`.

    A tracker that cannot start (package missing, no login) logs one warning and is left out.
    """
    trackers: list[Tracker] = []
    if wandb:
        t = _wandb_tracker(project, run_name, config, dir, tags)
        if t is not None:
            trackers.append(t)
    if mlflow is None:
        mlflow = bool(os.environ.get("MLFLOW_TRACKING_URI"))
    if mlflow:
        t = _mlflow_tracker(project, run_name, config)
        if t is not None:
            trackers.append(t)
    if not trackers:
        return Tracker()
    return trackers[0] if len(trackers) == 1 else MultiTracker(trackers)
