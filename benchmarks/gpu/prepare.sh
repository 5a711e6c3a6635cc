#!/usr/bin/env bash
# Prepare a run on the lent GPU machine (see benchmarks/README.md): wheels the GPU image lacks
# (Python 3.12) and the data files, in the git-ignored folder .device/, which the device
# tool's `carry` then takes along. Run here, from the repository root.
set -euo pipefail
mkdir -p .device/wheels .device/data
pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
    -d .device/wheels anndata array-api-compat legacy-api-wrap natsort session-info2 \
    scverse-misc donfig numcodecs zarr crc32c google-crc32c 2>&1 | tail -2 || true
S=../shared/data
cp -r "$S/geneformer-v1" "$S/geneformer-v2" "$S/kang2018_pbmc_ifnb_2000.h5ad" .device/data/
du -sh .device
