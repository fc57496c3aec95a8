#!/usr/bin/env bash
# A/B on the GPU machine: the bundle's embedflow (benches/gpu/pack.sh) against another build of
# it (OTHER: its stripped binary, xz-compressed, carried beside the bundle), alternating, three
# whole fp16 runs each on long.parquet at batch_tokens 16,384 and 65,536, with the run's own
# timings; then the other build's vectors against sentence-transformers fp32 (compare.py).
#   OTHER=.gpu/new/embedflow-new.xz bash benches/gpu/ab.sh     # prints "old|new BATCH RUN ..."
set -euo pipefail
G=${GPU_DIR:-/tmp/gpu}
: "${OTHER:?set OTHER to the other build, xz-compressed}"
O=${OUT:-$G/out}
mkdir -p "$O"
xz -dc "$OTHER" > $G/embedflow-new; chmod +x $G/embedflow-new
cp $G/embedflow $G/embedflow-old
PY=python3
site=$($PY -c 'import site; print(site.getsitepackages()[0])')
cuda_libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$G/ort:$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export ORT_DYLIB_PATH=$(ls "$G"/ort/libonnxruntime.so.*) EMBEDFLOW_HOME=$G/home EMBEDFLOW_PYTHON=$PY
export EMBEDFLOW_LOG=embedflow=debug,warn
yaml() { cat > $G/$1.yaml <<YAML
source:
  tables:
    t: { path: $2 }
embed:
  model: $G/model
  id: id
  device: cuda
  precision: fp16
  batch_tokens: $3
sink:
  parquet: { path: $G/out-$1 }
YAML
}
$PY -c "import pyarrow.parquet as pq; pq.write_table(pq.read_table('$G/long.parquet').slice(0, 500), '$G/small.parquet')"
yaml prep $G/small.parquet 16384
for b in old new; do $G/embedflow-$b run --no-progress $G/prep.yaml > /dev/null 2>&1; done
for bt in 16384 65536; do
yaml long $G/long.parquet $bt
for i in 1 2 3; do for b in old new; do
  rm -rf $G/out-long
  t0=$(date +%s.%N)
  $G/embedflow-$b run --no-progress --summary-json $O/$b.json $G/long.yaml > /dev/null 2> $O/$b-$bt-$i.log
  t1=$(date +%s.%N)
  $PY -c "import json,sys; s=json.load(open('$O/$b.json')); w=$t1-$t0; print('$b', $bt, $i, f'wall {w:.2f} s', f'{s[\"tokens\"]/w:,.0f} tok/s', 'model', round(s['model_seconds'],2), 'stream', round(s['stream_seconds'],2), f'streaming {s[\"tokens\"]/s[\"stream_seconds\"]:,.0f} tok/s')"
  grep -h "embedding time" $O/$b-$bt-$i.log | sed 's/.*DEBUG/  /'
done; done
done
yaml long $G/long.parquet 16384; rm -rf $G/out-long; $G/embedflow-new run --no-progress $G/long.yaml > /dev/null 2>&1
$PY benches/gpu/st_model.py "$G/model" "$G/st" > /dev/null 2>&1
$PY benches/gpu/compare.py "$G/long.parquet" "$G/st" "$G/out-long" 2>/dev/null | tail -1
