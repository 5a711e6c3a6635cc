"""The perturbation section of a results table of ``ispo perturb`` (``.parquet`` with its
metadata ``.json``): the run, its top hits (the aggregate statistics) and, with a goal state,
the paired goal-state test, both computed here with ``perturb-stats``' defaults (a table made
by ``ispo perturb-stats`` with other options is shown as computed: :mod:`.stats`)."""

from __future__ import annotations

from pathlib import Path

from ispo.errors import IspoError
from ispo.reporting.figures import Figures
from ispo.reporting.sections import RANDOM_NOTE, TOP_HITS, Section, read_json
from ispo.reporting.sections.stats import goal_context, is_stats_table

MARKERS: tuple[str, ...] = ()
HIT_COLUMNS = (
    "perturbed_symbols",
    "perturbed_ids",
    "n_cells",
    "cos_sim_mean",
    "cos_sim_median",
    "cos_sim_std",
    "cell_cos_sim_mean",
)
DEFAULTS = (
    "Computed here from the results with perturb-stats' defaults (paired test, --min-cells "
    "{min_cells}, FDR < {fdr_alpha}); a table made by ispo perturb-stats with other options is "
    "shown as computed when it is passed to ispo report."
)


def metadata_path(pq: Path) -> Path | None:
    """The run's metadata JSON beside a results table."""
    for side in (
        pq.with_suffix(".json"),
        pq.with_name(pq.name + ".json"),
        pq.with_suffix(".meta.json"),
    ):
        if side.is_file():
            return side
    return None


def is_results_table(path: Path) -> bool:
    return (
        path.suffix == ".parquet"
        and not path.name.endswith(".genes.parquet")
        and not is_stats_table(path)
    )


def finds(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.glob("*.parquet")) if is_results_table(p) and metadata_path(p)]


def _goal(pq: Path, states: dict, figures: Figures) -> dict:
    """The paired goal-state test of the run, with its volcano plot."""
    from ispo.perturbation.plots import volcano_png
    from ispo.perturbation.stats import perturb_stats

    goal = perturb_stats(
        pq,
        mode="goal_state_shift",
        goal_state=states["goal_state"],
        alt_states=states.get("alt_states") or [],
    )
    png = volcano_png(goal, figures.name(f"{pq.stem}-volcano"))
    image = figures.image(png, "volcano: mean shift toward the goal vs -log10 FDR")
    info = goal.attrs["ispo_stats"]
    return goal_context(goal, info, DEFAULTS.format(**info), [image])


def section(pq: Path, figures: Figures) -> Section:
    from ispo.perturbation.stats import perturb_stats

    meta_path = metadata_path(pq)
    meta = read_json(meta_path) if meta_path is not None else {}
    meta = meta if isinstance(meta, dict) else {}
    if isinstance(meta.get("metadata"), dict):
        meta = meta["metadata"]
    random_init = bool(meta.get("random_init"))
    context = dict(
        label=pq.name,
        notes=[RANDOM_NOTE.format(what="this perturbation run")] if random_init else [],
        meta=meta,
        params=meta.get("params") or {},
        no_stats=None,
        goal=None,
        goal_error=None,
        images=[],
    )
    try:
        agg = perturb_stats(pq, mode="aggregate")
    except IspoError as exc:
        context["no_stats"] = str(exc)
        return Section("perturb.md.j2", context, random_init)
    top = agg.head(TOP_HITS)
    cols = [c for c in HIT_COLUMNS if c in top.columns]
    cols += [c for c in top.columns if c.startswith("shift_") and c.endswith("_mean")]
    rows = [list(r) for r in top[cols].itertuples(index=False)]
    context["hits"] = dict(headers=cols, rows=rows, more=len(agg) if len(agg) > TOP_HITS else 0)
    states = context["params"].get("cell_states") or {}
    if states.get("goal_state"):
        try:
            context["goal"] = _goal(pq, states, figures)
        except IspoError as exc:
            context["goal_error"] = str(exc)
    if len(top):
        from ispo.perturbation.plots import hits_png

        png = hits_png(top, figures.name(f"{pq.stem}-hits"), random_init=random_init)
        context["images"] = [figures.image(png, "top perturbation hits")]
    return Section("perturb.md.j2", context, random_init)
