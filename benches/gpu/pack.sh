#!/usr/bin/env bash
# Packs what benches/gpu/run.sh needs on a GPU machine without network into .gpu/part-*
# (xz-compressed tar, split in 48 MiB parts): the release embedflow (stripped), the
# onnxruntime-gpu wheel's libraries (CUDA kernels trimmed to SM, see trim_fatbin.py), the model
# folder and the first ROWS IMDB reviews of ../shared/data as long.parquet (row groups of 1,000).
# On the GPU machine: cat part-* | xz -d | tar -x -C /tmp, then bash benches/gpu/run.sh.
# Needs the release build, ../shared, `bash scripts/bench-setup.sh` (its Python writes the
# Parquet), and strip, unzip, readelf and xz (binutils, unzip, xz-utils).
#   ROWS=30000 SM=90 bash benches/gpu/pack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-30000}
SM=${SM:-90}
ORT=${ORT_GPU_VERSION:-1.31.1}
HOME_DIR=${EMBEDFLOW_HOME:-$HOME/.cache/embedflow}
BIN=${CARGO_TARGET_DIR:-target}/release/embedflow
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
G=$W/gpu
mkdir -p "$G/ort" "$G/model" .gpu
rm -f .gpu/part-*
strip -o "$G/embedflow" "$BIN"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 -d "$W/wheel" "onnxruntime-gpu==$ORT"
unzip -q -j "$W"/wheel/*.whl 'onnxruntime/capi/libonnxruntime.so.*' \
  'onnxruntime/capi/libonnxruntime_providers_shared.so' \
  'onnxruntime/capi/libonnxruntime_providers_cuda.so' -d "$W/capi"
cp "$W"/capi/libonnxruntime.so.* "$W/capi/libonnxruntime_providers_shared.so" "$G/ort/"
python3 benches/gpu/trim_fatbin.py "$W/capi/libonnxruntime_providers_cuda.so" \
  "$G/ort/libonnxruntime_providers_cuda.so" "$SM"
cp -r ../shared/models/all-MiniLM-L6-v2/. "$G/model/"
"$HOME_DIR/bench-venv/bin/python" -c "
import pyarrow.parquet as pq, sys
t = pq.read_table('../shared/data/imdb_reviews.parquet', columns=['id', 'text']).slice(0, $ROWS)
pq.write_table(t, '$G/long.parquet', compression='zstd', row_group_size=1000)"
tar -C "$W" -cf - gpu | xz -T2 -6 | split -b 48M - .gpu/part-
ls -l .gpu
