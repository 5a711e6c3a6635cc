"""The evaluation section: the linear probe, the label geometry (with scib's names) and the
agreement with a reference embedding, of a ``metrics.json`` written by ``ispo evaluate``.

One template for both places an evaluation is read: ``ispo evaluate``'s own ``metrics.md``
(:func:`evaluation_markdown`) and the report's section (:func:`section`), so both show the same
tables with the same names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ispo.errors import IspoError
from ispo.reporting.figures import Figures
from ispo.reporting.render import fmt, render_markdown
from ispo.reporting.sections import Image, Section, label, read_json

MARKERS = ("metrics.json",)
#: (key in result["geometry"], scib name or "", what is better, short meaning)
GEOMETRY_ROWS = [
    ("silhouette", "ASW_label (before (x+1)/2)", "higher", "silhouette of the labels, -1..1"),
    ("separation_ratio", "", "higher", "between-label / within-label mean distance"),
    ("knn_label_consistency", "", "higher", "share of k nearest cells with the same label"),
    ("ari", "ARI_cluster/label", "higher", "KMeans (one cluster per label) vs labels"),
    ("nmi", "NMI_cluster/label", "higher", "KMeans (one cluster per label) vs labels"),
    ("davies_bouldin", "", "lower", "Davies-Bouldin index"),
    ("calinski_harabasz", "", "higher", "Calinski-Harabasz index"),
    ("control_separation", "", "higher", "control-to-other / control-to-control distance"),
]
CONSISTENCY_ROWS = [
    ("cosine_mean", "mean per-cell cosine"),
    ("cosine_min", "lowest per-cell cosine"),
    ("cosine_p01", "1st percentile of per-cell cosine"),
    ("cosine_p05", "5th percentile"),
    ("cosine_p50", "median"),
    ("max_abs_diff", "largest element-wise difference"),
    ("knn_overlap", "shared k-nearest neighbours (1 = same graph)"),
]
PER_LABEL = ("label", "n_cells", "n_test", "f1", "silhouette", "knn_label_consistency")
SUBSAMPLE = ("metric", "n_cells", "of", "cap", "seed")
IMAGES = {
    "embedding": "embedding coloured by label",
    "confusion": "confusion matrix of the linear probe",
}


def is_evaluation(data: Any) -> bool:
    return isinstance(data, dict) and "classification" in data


def finds(folder: Path) -> list[Path]:
    """A ``metrics.json`` that is not a fine-tuning's (an unreadable one counts: its section
    then says what is wrong with it)."""
    from ispo.reporting.sections.finetune import is_finetune

    path = folder / "metrics.json"
    return [folder] if path.is_file() and not is_finetune(path) else []


def _context(result: dict, images: list[Image], level: int, title: str | None) -> dict:
    p = result.get("params", {})
    emb = result.get("embedding") or {}
    made = ", ".join(
        f"{k} {emb[k]}"
        for k in ("model", "method", "precision", "emb_layer", "pool", "device")
        if k in emb
    )
    g = result["geometry"]
    geometry = [
        [k, scib, fmt(g.get(k)), better, what] for k, scib, better, what in GEOMETRY_ROWS if k in g
    ]
    if "scib" in result:
        geometry.append(
            [
                "(scib) ASW_label",
                "ASW_label",
                fmt(result["scib"]["ASW_label"]),
                "higher",
                "silhouette rescaled to 0..1 as scib reports it",
            ]
        )
    cons = result.get("consistency") or {}
    return dict(
        level=level,
        title=title
        or f"Embedding evaluation: {p.get('embedding_key', '?')} by {p.get('label_key', '?')}",
        warnings=result.get("warnings", []),
        r=result,
        p=p,
        c=result["classification"],
        made=made,
        geometry=geometry,
        cons=cons,
        consistency=[[k, fmt(cons[k], digits=6), m] for k, m in CONSISTENCY_ROWS if k in cons],
        # each label's own scores: pooled figures weight labels by their cells, so a label that
        # does not separate can hide behind a large one that does
        per_label=[[r[k] for k in PER_LABEL] for r in result.get("per_label") or []],
        # the metrics run on a seeded subset of the cells, and on how many
        subsamples=[
            [*(r[k] for k in SUBSAMPLE[:-1]), str(r["seed"])]
            for r in result.get("subsamples") or []
        ],
        images=images,
    )


def evaluation_markdown(
    result: dict, *, images: dict[str, str] | None = None, level: int = 1, title: str | None = None
) -> str:
    """The Markdown of an :func:`ispo.evaluate` result; ``images`` maps ``"embedding"`` /
    ``"confusion"`` to paths relative to where the Markdown is written."""
    shown = [Image(path, IMAGES[key]) for key, path in (images or {}).items()]
    return render_markdown("evaluate.md.j2", **_context(result, shown, level, title))


def section(folder: Path, figures: Figures) -> Section:
    result = read_json(folder / "metrics.json")
    if not is_evaluation(result):
        raise IspoError(
            f"{folder / 'metrics.json'} is not an ispo evaluate result: rerun ispo evaluate"
        )
    images = [
        img
        for key, alt in IMAGES.items()
        if (img := figures.copy(folder / f"{key}.png", f"{label(folder)}-{key}", alt))
    ]
    p = result.get("params", {})
    title = (
        f"Evaluation: {label(folder)} ({p.get('embedding_key', '?')} by {p.get('label_key', '?')})"
    )
    return Section(
        "evaluate.md.j2", _context(result, images, 2, title), bool(result.get("random_init"))
    )
