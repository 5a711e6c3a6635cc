#!/usr/bin/env bash
# The GPU checks, as one script for the device tool:
#   run(command="bash benchmarks/gpu/run.sh", carry=[".device"], timeout_s=540)
# Installs ispo, then runs the methods table for gf-6L and gf-12L-38M on the Kang 2,000 cells
# and 1,000 demo cells, and the delete-all ISP speed against the original loop. Everything lands
# in one archive under $OUT (the tool brings back at most 8 files).
set -uo pipefail
pip install -q --no-deps .device/wheels/*.whl 2>&1 | tail -1
pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
D=.device/data
R=$(mktemp -d)
KANG=(--data $D/kang2018_pbmc_ifnb_2000.h5ad --n-cells 2000)
B=(--random-init --device cuda --no-save-embeddings --repeats 3)
timeout 150 ispo -q benchmark "${KANG[@]}" --vocab $D/geneformer-v1 --model gf-6L-10M-i2048 \
    "${B[@]}" --methods all --out "$R/kang-gf-6L"
timeout 150 ispo -q benchmark "${KANG[@]}" --vocab $D/geneformer-v2 --model gf-12L-38M-i4096 \
    "${B[@]}" --methods baseline,fp16,bf16,fast,fast-bf16,fast-bf16+compile --out "$R/kang-gf-12L"
timeout 90 ispo -q benchmark --data demo:1000 --n-cells 1000 --model gf-6L-10M-i2048 "${B[@]}" \
    --methods baseline,bf16,fast,fast-bf16 --out "$R/demo-gf-6L"
timeout 120 ispo -q bench-isp --data $D/kang2018_pbmc_ifnb_2000.h5ad --vocab $D/geneformer-v1 \
    --random-init --device cuda --n-cells 20 --precisions fp32,bf16 --out "$R/isp-kang-gf-6L"
tar czf "$OUT/gpu-results.tgz" -C "$R" .
cat "$R"/*/results.md > "$OUT/summary.md" 2>/dev/null
cat "$OUT/summary.md"
