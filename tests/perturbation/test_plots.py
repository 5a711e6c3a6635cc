"""The plots of perturbation statistics: what they show when there is nothing to show, and the
random-weights note on every plot of a random-weights run."""

import matplotlib.image
import numpy as np

from ispo.cli.main import main
from ispo.perturbation.plots import (
    RANDOM_NOTE,
    hits_figure,
    hits_png,
    volcano_empty,
    volcano_figure,
)
from ispo.perturbation.stats import perturb_stats
from ispo.perturbation.stats.simulate import Design, simulated_results

FEW_CELLS = Design(n_cells=6)  # every gene in at most 6 cells: below --min-cells 10


def texts(fig) -> str:
    """Every text drawn on a figure: the figure's own, each axis' title and texts."""
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_title()] + [t.get_text() for t in ax.texts]
    return "\n".join(parts)


def test_volcano_with_no_gene_tested_says_so(tmp_path, capsys):
    df, _ = simulated_results(FEW_CELLS)
    stats = perturb_stats(df, mode="goal_state_shift")
    assert not stats["tested"].any() and volcano_empty(stats)
    fig = volcano_figure(stats)
    said = texts(fig)
    assert "No gene tested" in said and "fewer than 10 cells (--min-cells)" in said
    assert not fig.axes[0].axison  # no meaningless axis
    path = tmp_path / "isp.parquet"
    df.to_parquet(path)
    out = tmp_path / "stats.csv"
    main(
        ["perturb-stats", str(path), "--mode", "goal_state_shift", "--goal-state", "end"]
        + ["--out", str(out)]
    )
    assert "(no gene tested: the plot says so)" in capsys.readouterr().out
    assert matplotlib.image.imread(tmp_path / "stats.volcano.png").shape[2] in (3, 4)


def test_volcano_with_genes_tested_has_points():
    df, _ = simulated_results()
    stats = perturb_stats(df, mode="goal_state_shift")
    fig = volcano_figure(stats)
    assert not volcano_empty(stats) and "No gene tested" not in texts(fig)
    assert fig.axes[0].get_xlabel() == "mean shift toward the goal"


def test_random_weights_note_on_the_hits_and_volcano_plots(tmp_path):
    df, _ = simulated_results(Design(n_toward=3, n_away=3, n_single=0, n_null=20))
    agg = perturb_stats(df, mode="aggregate")
    assert RANDOM_NOTE in texts(hits_figure(agg, random_init=True))
    assert "[random weights]" in texts(hits_figure(agg, random_init=True))
    assert RANDOM_NOTE not in texts(hits_figure(agg))
    stats = perturb_stats(df, mode="goal_state_shift")
    assert RANDOM_NOTE not in texts(volcano_figure(stats))
    stats.attrs["ispo_stats"]["random_init"] = True
    assert RANDOM_NOTE in texts(volcano_figure(stats))
    # the note is drawn: its red appears in the PNG only with random weights
    red = np.array([0xB2, 0x18, 0x2B]) / 255
    for random_init in (True, False):
        png = hits_png(agg, tmp_path / f"hits-{random_init}.png", random_init=random_init)
        rgb = matplotlib.image.imread(png)[..., :3]
        assert (np.abs(rgb - red).max(axis=-1) < 0.02).any() == random_init
