"""Calibration of perturb-stats' paired goal-state test under five shapes of within-cell noise.

    python benchmarks/stats_calibration.py [--seeds 100] [--alpha 0.05] [--out DIR]

For each noise shape of :mod:`ispo.perturbation.stats.simulate` (normal, exponential,
lognormal, t with 2 df, heteroscedastic cells), two sets of simulated runs of 40 cells (each gene
seen in a cell with probability 0.7, every cell with its own offset toward the goal):

- **null**: 300 genes without effect, seeds 0..N-1: the share of null genes with p < 0.05 (the
  within-cell rank test two-sided ``goal_vs_cell_pval``, each one-sided direction, and the
  call's p-value ``goal_call_pval``), and the share of runs with any call;
- **planted**: 10 genes toward the goal (+0.015), 10 away (-0.015), 20 seen in one cell, 260
  null (noise scale 0.01), seeds 0..N-1: the false discovery proportion of all calls together
  (mean over seeds), the share of planted genes called in their direction (power), calls per
  run; and the share of away genes that ``--method geneformer`` (two-sided) calls significant.

Seeds feed ``numpy.random.default_rng([seed, index of the shape])``. Writes ``results.json``
(rows + how it ran: seeds, versions, commit, CPU, load) and ``results.md`` (the README's table)
to ``--out`` (default ``benchmarks/results/stats-calibration/``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy.special import ndtr

from ispo.hardware import cpu_summary
from ispo.perturbation.stats import perturb_stats
from ispo.perturbation.stats.simulate import NOISE_SHAPES, Design, simulated_results
from ispo.provenance import git_commit, versions

REPO = Path(__file__).resolve().parents[1]
NULL = Design(n_toward=0, n_away=0, n_single=0, n_null=300)
PLANTED = Design()


def null_row(shape: str, seeds: range, alpha: float) -> dict:
    """Shares of null genes below p = 0.05 per p-value, and of runs with any call."""
    z, call_p, any_call = [], [], 0
    for seed in seeds:
        out = perturb_stats(
            simulated_results(NULL, shape, seed)[0], mode="goal_state_shift", fdr_alpha=alpha
        )
        z.append(out["goal_vs_cell_z"].to_numpy())
        call_p.append(out["goal_call_pval"].to_numpy())
        any_call += bool((out["toward_goal"] | out["away_from_goal"]).any())
    z, call_p = np.concatenate(z), np.concatenate(call_p)
    return {
        "null_genes": int(z.size),
        "null_rate_two_sided": float((2 * ndtr(-np.abs(z)) < 0.05).mean()),
        "null_rate_toward": float((ndtr(-z) < 0.05).mean()),
        "null_rate_away": float((ndtr(z) < 0.05).mean()),
        "null_rate_call_p": float((call_p < 0.05).mean()),
        "null_runs_with_a_call": any_call / len(seeds),
    }


def planted_row(shape: str, seeds: range, alpha: float) -> dict:
    """Mean false discovery proportion of all calls, power per direction, calls per run."""
    fdp, toward, away, calls, gf_away = [], [], [], [], []
    for seed in seeds:
        df, kinds = simulated_results(PLANTED, shape, seed)
        out = perturb_stats(df, mode="goal_state_shift", fdr_alpha=alpha)
        gf = perturb_stats(df, mode="goal_state_shift", method="geneformer", fdr_alpha=alpha)
        gf_away.append((gf["significant"] & (gf["perturbed_ids"].map(kinds) == "away")).sum())
        kind = out["perturbed_ids"].map(kinds)
        hit_t = out["toward_goal"] & (kind == "toward")
        hit_a = out["away_from_goal"] & (kind == "away")
        called = out["toward_goal"] | out["away_from_goal"]
        fdp.append(float((called & ~(hit_t | hit_a)).sum() / max(called.sum(), 1)))
        toward.append(hit_t.sum() / PLANTED.n_toward)
        away.append(hit_a.sum() / PLANTED.n_away)
        calls.append(int(called.sum()))
    return {
        "fdp_mean": float(np.mean(fdp)),
        "fdp_max": float(np.max(fdp)),
        "power_toward": float(np.mean(toward)),
        "power_away": float(np.mean(away)),
        "calls_per_run": float(np.mean(calls)),
        "geneformer_away_significant": float(np.mean(gf_away)) / PLANTED.n_away,
    }


def markdown(rows: list[dict], meta: dict) -> str:
    """The table of the README, with how it was made."""
    lines = [
        "| noise | null p < 0.05: two-sided (toward / away) | call p < 0.05 "
        "| FDP of calls (mean, max) | power toward / away | calls per run "
        "| geneformer: away genes significant |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['shape']} | {r['null_rate_two_sided']:.3f} ({r['null_rate_toward']:.3f} / "
        f"{r['null_rate_away']:.3f}) | {r['null_rate_call_p']:.3f} | "
        f"{r['fdp_mean']:.3f}, {r['fdp_max']:.3f} | {r['power_toward']:.2f} / "
        f"{r['power_away']:.2f} | {r['calls_per_run']:.1f} | "
        f"{r['geneformer_away_significant']:.2f} |"
        for r in rows
    ]
    lines += [
        "",
        f"Seeds {meta['seeds']} per shape and set ({meta['null_genes_per_shape']:,} null genes "
        f"per shape); FDR alpha {meta['alpha']}; commit {meta['commit']}; {meta['cpu']}; "
        f"load average {meta['load_average']['start']:.2f} -> {meta['load_average']['end']:.2f}; "
        f"{meta['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=100, help="runs per shape and set")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/stats-calibration")
    args = p.parse_args(argv)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    seeds = range(args.seeds)
    rows = []
    for shape in NOISE_SHAPES:
        rows.append(
            {
                "shape": shape,
                **null_row(shape, seeds, args.alpha),
                **planted_row(shape, seeds, args.alpha),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "what": "paired goal_state_shift test on simulated runs (ispo.perturbation.stats.simulate)",
        "seeds": f"0-{args.seeds - 1}",
        "null_design": asdict(NULL),
        "planted_design": asdict(PLANTED),
        "null_genes_per_shape": rows[0]["null_genes"],
        "alpha": args.alpha,
        "commit": git_commit(),
        "versions": versions(),
        "cpu": cpu_summary(),
        "load_average": {"start": load0, "end": os.getloadavg()[0]},
        "seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "meta": meta}, indent=2))
    (args.out / "results.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
