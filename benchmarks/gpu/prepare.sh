#!/usr/bin/env bash
# Prepare a run on the lent GPU machine (see benchmarks/README.md): wheels the GPU image lacks
# (Python 3.12) and the data files, in the git-ignored folder .device/, which the device
# tool's `carry` then takes along. Run here, from the repository root.
set -euo pipefail
rm -rf .device/wheels
mkdir -p .device/wheels .device/data
# anndata and what it needs beyond the image's packages (pip download of anndata with its
# dependencies, less numpy/scipy/pandas/h5py/packaging/pyyaml/dateutil, which the image has)
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .device/wheels \
    anndata annotated-types array-api-compat donfig google-crc32c legacy-api-wrap msgspec \
    natsort numcodecs pydantic pydantic-core pydantic-settings python-dotenv scverse-misc \
    session-info2 typing-extensions typing-inspection zarr 2>&1 | grep -v "is ignored" || true
S=../shared/data
cp -r "$S/geneformer-v1" "$S/geneformer-v2" "$S/kang2018_pbmc_ifnb_2000.h5ad" .device/data/
du -sh .device
# the device copy travels without .git: record the commit for the result files
python -c "from ispo.provenance import git_commit; print(git_commit())" > .device/COMMIT
