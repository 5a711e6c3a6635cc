"""The human-readable side of an evaluation: tables of the metrics, as a report document.

Shared by ``ispo evaluate`` (its ``metrics.md``) and ``ispo report`` (its evaluation section), so
both show the same table with the same names.
"""

from __future__ import annotations

from ispo.reporting.document import Document, fmt

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


def evaluation_document(
    result: dict, *, images: dict[str, str] | None = None, level: int = 1, title: str | None = None
) -> Document:
    """A :class:`~ispo.reporting.report.Document` of an :func:`ispo.evaluate` result.

    ``images`` maps ``"embedding"`` / ``"confusion"`` to image paths (relative to where the
    Markdown is written); ``level`` is the heading level of the title.
    """
    doc = Document()
    p = result.get("params", {})
    doc.heading(
        title
        or f"Embedding evaluation: {p.get('embedding_key', '?')} by {p.get('label_key', '?')}",
        level,
    )
    for w in result.get("warnings", []):
        doc.note(w)
    emb = result.get("embedding") or {}
    made = ", ".join(
        f"{k} {emb[k]}"
        for k in ("model", "method", "precision", "emb_layer", "pool", "device")
        if k in emb
    )
    doc.paragraph(
        f"{fmt(result['n_cells'])} cells evaluated of {fmt(result.get('n_obs'))} "
        f"({fmt(result.get('n_not_embedded', 0))} not embedded, {fmt(result['n_dropped_nan'])} "
        f"with NaN dropped); {result['n_labels']} labels; embedding dimension "
        f"{result['embedding_dim']}." + (f" Embedding: {made}." if made else "")
    )

    _classification(doc, result, level + 1)
    _geometry(doc, result, level + 1)
    _per_label(doc, result.get("per_label"), level + 1)
    _consistency(doc, result.get("consistency"), level + 1)
    _subsamples(doc, result.get("subsamples"), level + 1)

    images = images or {}
    if images:
        doc.heading("Plots", level + 1)
        if "embedding" in images:
            doc.image(images["embedding"], "embedding coloured by label")
        if "confusion" in images:
            doc.image(images["confusion"], "confusion matrix of the linear probe")
    return doc


def _classification(doc: Document, result: dict, level: int) -> None:
    """The linear probe's section: how it was split and its scores."""
    p = result.get("params", {})
    c = result["classification"]
    doc.heading("Classification (linear probe)", level)
    doc.paragraph(
        f"Ridge classifier on standardised features, stratified split "
        f"({fmt(c['n_train'])} train / {fmt(c['n_test'])} test cells, seed "
        f"{p.get('seed', 0)}); classes: {', '.join(c['classes'])}."
    )
    doc.table(
        ["metric", "value"],
        [
            ["accuracy", fmt(c["accuracy"])],
            ["F1 (weighted)", fmt(c["f1_weighted"])],
            ["F1 (macro)", fmt(c["f1_macro"])],
        ],
    )


def _geometry(doc: Document, result: dict, level: int) -> None:
    """The label-geometry section, with scib's names beside ours."""
    p = result.get("params", {})
    g = result["geometry"]
    doc.heading("Geometry", level)
    rows = [
        [key, scib or "", fmt(g.get(key)), better, meaning]
        for key, scib, better, meaning in GEOMETRY_ROWS
        if key in g
    ]
    if "scib" in result:
        rows.append(
            [
                "(scib) ASW_label",
                "ASW_label",
                fmt(result["scib"]["ASW_label"]),
                "higher",
                "silhouette rescaled to 0..1 as scib reports it",
            ]
        )
    doc.table(["metric", "scib name", "value", "better", "meaning"], rows)
    doc.paragraph(
        f"k = {p.get('k', 10)} neighbours; KMeans and subsamples seeded with {p.get('seed', 0)}."
    )


def _consistency(doc: Document, cons: dict | None, level: int) -> None:
    """Agreement with a reference embedding of the same cells, when one was given."""
    if cons:
        doc.heading("Consistency with the reference embedding", level)
        doc.paragraph(
            f"Same {fmt(cons.get('n_cells'))} cells embedded twice; reference: "
            f"{cons.get('reference', '?')}; k = {cons.get('k')}."
        )
        doc.table(
            ["metric", "value", "meaning"],
            [[k, fmt(cons[k], digits=6), m] for k, m in CONSISTENCY_ROWS if k in cons],
        )


def _per_label(doc: Document, rows: list[dict] | None, level: int) -> None:
    """Each label's own scores: the pooled figures weight labels by their cells, so a label
    that does not separate can hide behind a large one that does."""
    if rows:
        doc.heading("Per label", level)
        doc.table(
            ["label", "cells", "test cells", "F1", "silhouette", "kNN label consistency"],
            [
                [
                    r["label"],
                    fmt(r["n_cells"]),
                    fmt(r["n_test"]),
                    fmt(r["f1"]),
                    fmt(r["silhouette"]),
                    fmt(r["knn_label_consistency"]),
                ]
                for r in rows
            ],
        )


def _subsamples(doc: Document, records: list[dict] | None, level: int) -> None:
    """Which metrics ran on a seeded subset of the cells, and on how many."""
    if records:
        doc.heading("Subsamples", level)
        doc.paragraph(
            "Metrics that cost more than linear time in the cells use at most `cap` cells, "
            "drawn with numpy.random.default_rng(seed) (kNN: the query cells; their neighbours "
            "are searched among all cells)."
        )
        doc.table(
            ["metric", "cells used", "of", "cap", "seed"],
            [
                [r["metric"], fmt(r["n_cells"]), fmt(r["of"]), fmt(r["cap"]), r["seed"]]
                for r in records
            ],
        )
