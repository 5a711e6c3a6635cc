#!/usr/bin/env bash
# Regenerates docs/report-example.png: `ispo report` of the committed CPU benchmark, an
# evaluation of demo embeddings, a perturbation run and its perturb-stats table (demo data and
# seeded random weights: the report says so on every section), and the committed Kang
# fine-tuning run with its classifier-probability statistics, drawn by headless Chromium.
# Run from the repository root (the report names its inputs relative to it); the work goes to
# runs/report-example/, which git ignores. Takes a few minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
w=runs/report-example
rm -rf "$w" && mkdir -p "$w"
ispo -q embed demo:150 --model gf-6L-10M-i2048 --random-init --out "$w/emb.h5ad"
ispo -q evaluate "$w/emb.h5ad" --label-key condition --control-label control --out "$w/eval"
python -c "import numpy as np; from ispo.io.demo import demo_adata; a = demo_adata(200); \
a.obs['n_counts'] = np.asarray(a.X.sum(1)).ravel(); \
keep = np.sort(np.argsort(-np.asarray(a.X.mean(0)).ravel())[:150]); \
a[:, keep].copy().write_h5ad('$w/demo150.h5ad')"
ispo -q perturb "$w/demo150.h5ad" --vocab demo --model gf-6L-10M-i2048 --random-init \
  --state-key condition --start-state control --goal-state Dex --alt-states Nutlin \
  --out "$w/isp.parquet"
ispo -q perturb-stats "$w/isp.parquet" --mode goal_state_shift --min-cells 5 --out "$w/stats.csv"
kang=benchmarks/results/cpu-finetune-kang-e2e  # committed by benchmarks/kang_end_to_end.sh
ispo -q report benchmarks/results/cpu-default-epyc "$w/eval" "$w/isp.parquet" "$w/stats.csv" \
  "$kang/finetune" "$kang/isp/kang-isp-classprob.csv" \
  --title "ispo report: benchmark, evaluation, perturbation, fine-tuning (CPU)" --out "$w/report"
png="$PWD/docs/report-example.png"
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,20000 \
  --user-data-dir="$w/chromium" --screenshot="$png" "file://$PWD/$w/report/report.html"
# the whole page and no more: crop the blank window below its end
python -c "from PIL import Image, ImageChops; im = Image.open('$png').convert('RGB'); \
box = ImageChops.difference(im, Image.new('RGB', im.size, (255, 255, 255))).getbbox(); \
im.crop((0, 0, im.width, min(im.height, box[3] + 40))).quantize(256).save('$png', optimize=True)"
