#!/usr/bin/env bash
# Real data end to end on a CPU: fine-tune a ctrl/stim classifier from a RANDOM-INIT gf-6L preset
# on the 2,000 Kang 2018 PBMCs, delete every gene of a few stimulated cells in silico with the
# fine-tuned model (toward the ctrl state), and test per gene which deletions move cells toward
# ctrl. A model trained on 2,000 cells is a test of the pipeline, not a foundation model.
#
#   bash benchmarks/kang_end_to_end.sh [finetune|perturb|stats|collect|all]
#
# Each stage resumes (finetune and perturb take --resume). The model (~40 MB) stays in
# runs/kang-finetune; the small result files go to benchmarks/results/cpu-finetune-kang-e2e/.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${ISPO_SHARED_DATA:-../shared/data}
KANG=$DATA/kang2018_pbmc_ifnb_2000.h5ad
VOCAB=$DATA/geneformer-v1
RUNS=runs
OUT=benchmarks/results/cpu-finetune-kang-e2e
N_CELLS=${N_CELLS:-120}  # stimulated cells perturbed (every expressed gene of each deleted)
stage=${1:-all}

finetune() {
  # each cell's top 256 genes (median Kang cell: 478): ISGs lead a stim cell's ranking, and a
  # stray count of one at a ctrl cell's tail no longer reaches the model (tries.md, run G)
  ispo finetune "$KANG" --label-key condition --model gf-6L-30M-i2048 --random-init \
    --vocab "$VOCAB" --out $RUNS/kang-finetune --max-input 256 --batch-tokens 4096 --epochs 8 \
    --lr 1e-4 --dropout 0.1 --warmup 0.1 --weight-decay 0.01 --schedule cosine --seed 0 \
    --device cpu --resume
}

perturb() {
  ispo perturb "$KANG" --vocab "$VOCAB" --model $RUNS/kang-finetune --genes all \
    --perturb-type delete --state-key condition --start-state stim --goal-state ctrl \
    --emb-layer 0 --max-ncells "$N_CELLS" --device cpu --out $RUNS/kang-isp.parquet --resume
}

stats() {  # the embedding shift toward ctrl, and the classifier's probability of ctrl
  ispo perturb-stats $RUNS/kang-isp.parquet --mode goal_state_shift --min-cells 5 \
    --out $RUNS/kang-isp-stats.csv
  ispo perturb-stats $RUNS/kang-isp.parquet --mode class_prob --min-cells 5 \
    --out $RUNS/kang-isp-classprob.csv
}

collect() {  # finetune/ is what `ispo report` reads as a fine-tuning run; isp/ the rest
  mkdir -p $OUT/finetune $OUT/isp
  cp $RUNS/kang-finetune/{metrics.json,config.json,config.yaml,split.csv} $OUT/finetune/
  cp $RUNS/kang-finetune/{confusion_matrix.png,training_curve.png} $OUT/finetune/
  # what the same tokens allow a linear model, on the same split
  python benchmarks/kang_linear_baseline.py $RUNS/kang-finetune --data "$KANG" --vocab "$VOCAB" \
    --out $OUT/finetune
  cp $RUNS/kang-isp.parquet $RUNS/kang-isp.json $OUT/isp/
  cp $RUNS/kang-isp-stats.csv{,.config.yaml} $RUNS/kang-isp-stats.volcano.png $OUT/isp/
  cp $RUNS/kang-isp-classprob.csv{,.config.yaml} $RUNS/kang-isp-classprob.volcano.png $OUT/isp/
  uptime > $OUT/load.txt
}

case $stage in
  finetune | perturb | stats | collect) $stage ;;
  all) finetune && perturb && stats && collect ;;
  *) echo "usage: $0 [finetune|perturb|stats|collect|all]" >&2; exit 2 ;;
esac
