#!/usr/bin/env bash
# The GPU checks, as one script for the device tool (prepare first: benchmarks/gpu/prepare.sh):
#   run(command="bash benchmarks/gpu/run.sh", carry=[".device"], timeout_s=560)
# 1. CUDA correctness (benchmarks/gpu/check.py): fast vs Hugging Face on the GPU, a real OOM.
# 2. The methods table for gf-6L and gf-12L-38M on the Kang 2,000 cells and 1,000 demo cells
#    (compiled methods in their own runs, so a slow compile cannot cost the other rows).
# 3. Delete-all ISP speed against the original loop, and a one-GPU torchrun (NCCL) embed.
# Each step has its own time limit and log; everything lands in one archive under $OUT.
# DEV, N_KANG, N_DEMO, N_ISP and T (seconds per step) can be set for a dry run on the CPU;
# STEPS="check isp-kang-gf-6L" runs only the named steps.
set -uo pipefail
export PYTHONUNBUFFERED=1
export ISPO_GIT_COMMIT=${ISPO_GIT_COMMIT:-$(cat .device/COMMIT 2>/dev/null || echo unknown)}
DEV=${DEV:-cuda}; N_KANG=${N_KANG:-2000}; N_DEMO=${N_DEMO:-1000}; N_ISP=${N_ISP:-20}; T=${T:-1}
OUT=${OUT:-$(mktemp -d)}
if [ "$DEV" = cuda ]; then
    python3 -m pip install -q --no-deps .device/wheels/*.whl 2>&1 | tail -1
    python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -1
    python3 -c "import anndata, ispo.cli.main" || exit 1  # a missing wheel: stop before the steps
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
fi
D=.device/data
R=$(mktemp -d)
step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $R/NAME.log, note the status
    local name=$1 limit=$2; shift 2
    case " ${STEPS:-$name} " in *" $name "*) ;; *) return ;; esac  # STEPS="a b": only those
    local t0=$SECONDS
    timeout $((limit * T)) "$@" >"$R/$name.log" 2>&1
    local rc=$?
    echo "step $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$R/steps.txt"
    tail -n 4 "$R/$name.log"
}
KANG=(--data $D/kang2018_pbmc_ifnb_2000.h5ad --n-cells "$N_KANG")
B=(--random-init --device "$DEV" --no-save-embeddings --repeats 3)
V1=(--vocab $D/geneformer-v1 --model gf-6L-10M-i2048)
V2=(--vocab $D/geneformer-v2 --model gf-12L-38M-i4096)
step check 60 python3 benchmarks/gpu/check.py $D/kang2018_pbmc_ifnb_2000.h5ad $D/geneformer-v1 300
step kang-gf-6L 90 python3 -m ispo -q benchmark "${KANG[@]}" "${V1[@]}" "${B[@]}" \
    --methods reference,mixed_precision,quantization,fast,fast-bf16,fast-fp16,fast-int8 \
    --out "$R/kang-gf-6L"
step kang-gf-12L 90 python3 -m ispo -q benchmark "${KANG[@]}" "${V2[@]}" "${B[@]}" \
    --methods baseline,batching,fp16,bf16,int8,fast,fast-bf16,fast-fp16 --out "$R/kang-gf-12L"
step demo-gf-6L 60 python3 -m ispo -q benchmark --data "demo:$N_DEMO" --n-cells "$N_DEMO" \
    --model gf-6L-10M-i2048 "${B[@]}" --methods baseline,bf16,fast,fast-bf16 --out "$R/demo-gf-6L"
step isp-kang-gf-6L 90 python3 -m ispo -q bench-isp --data $D/kang2018_pbmc_ifnb_2000.h5ad "${V1[@]}" \
    --random-init --device "$DEV" --n-cells "$N_ISP" --precisions fp32,bf16 --out "$R/isp-kang-gf-6L"
step compile-kang-gf-6L 90 python3 -m ispo -q benchmark "${KANG[@]}" "${V1[@]}" "${B[@]}" \
    --methods fast,fast-bf16,compile --out "$R/compile-kang-gf-6L"
step torchrun-embed 40 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m ispo -q embed \
    $D/kang2018_pbmc_ifnb_2000.h5ad "${V1[@]}" --random-init --device "$DEV" \
    --precision bf16 --out "$R/torchrun-embed.h5ad"
rm -f "$R/torchrun-embed.h5ad"
tar czf "$OUT/gpu-results.tgz" -C "$R" .
cat "$R"/*/results.md > "$OUT/summary.md" 2>/dev/null
cp "$R/steps.txt" "$R/check.log" "$OUT/" 2>/dev/null
grep -h -E "^\| (baseline|fast|bf16|fp16|ispo|original)" "$R"/*/results.md | cut -c1-160
cat "$R/steps.txt"
