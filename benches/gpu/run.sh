#!/usr/bin/env bash
# embedflow's CUDA fp16 path on the long set, side by side with sentence-transformers fp16 on the
# same GPU. Runs on the GPU machine from the repository root, over the bundle that
# benches/gpu/pack.sh made, unpacked in $GPU_DIR (default /tmp/gpu): embedflow, ONNX Runtime's
# CUDA libraries (the onnxruntime-gpu wheel's), the model folder and long.parquet. CUDA and cuDNN
# come from the machine's Python (its nvidia-* wheels). Logs and JSON go to $OUT; the table is
# printed last.
set -euo pipefail
G=${GPU_DIR:-/tmp/gpu}
O=${OUT:-$G/out}
PY=${PYTHON:-python3}
mkdir -p "$O"
site=$($PY -c 'import site; print(site.getsitepackages()[0])')
cuda_libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="$G/ort:$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ORT_DYLIB_PATH=$(ls "$G"/ort/libonnxruntime.so.*)
export ORT_DYLIB_PATH EMBEDFLOW_HOME=$G/home EMBEDFLOW_PYTHON=$PY
export EMBEDFLOW_LOG=${EMBEDFLOW_LOG:-embedflow=debug,warn}  # debug: the tokenise/infer split

DEVICE=${EF_DEVICE:-cuda}       # EF_DEVICE=cpu EF_PRECISION=fp32 ST_DEVICE=cpu: a dry run without a GPU
PRECISION=${EF_PRECISION:-fp16}
export ST_DEVICE=${ST_DEVICE:-cuda}
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)
cpu="$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores"
echo "GPU: $gpu; CPU: $cpu"

pipeline() { # NAME PARQUET BATCH_TOKENS
  rm -rf "$G/out-$1"
  cat > "$G/$1.yaml" <<YAML
source:
  tables:
    t: { path: $2 }
embed:
  model: $G/model
  id: id
  device: $DEVICE
  precision: $PRECISION
  batch_tokens: $3
sink:
  parquet: { path: $G/out-$1 }
YAML
}

run() { # NAME: one whole `embedflow run`; prints "NAME wall_s tokens stream_tok_s model_s"
  local t0 t1
  t0=$(date +%s.%N)
  "$G/embedflow" run --no-progress --summary-json "$O/$1.json" "$G/$1.yaml" > "$O/$1.out" 2> "$O/$1.log" || {
    tail -20 "$O/$1.log"; return 1; }
  t1=$(date +%s.%N)
  $PY - "$O/$1.json" "$t0" "$t1" "$1" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1])); wall = float(sys.argv[3]) - float(sys.argv[2])
print(f"{sys.argv[4]} {wall:.2f} {s['tokens']} {s['tokens'] / s['stream_seconds']:.0f} {s['model_seconds']:.2f} {s['rows_written']}")
PYEOF
}

$PY benches/gpu/st_model.py "$G/model" "$G/st" > "$O/st_model.log"
$PY -c "import pyarrow.parquet as pq; pq.write_table(pq.read_table('$G/long.parquet').slice(0, 500), '$G/small.parquet')"

# The first run prepares the fp16 model (ONNX Runtime's BERT fusions, fp16 weights) and caches it.
pipeline prepare "$G/small.parquet" 16384
run prepare | tee "$O/runs.txt"
for bt in 16384 16384 65536 4096; do
  pipeline "b$bt" "$G/long.parquet" "$bt"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
    > "$O/util-b$bt.csv" 2>/dev/null &
  smi=$!
  run "b$bt" | tee -a "$O/runs.txt"
  kill $smi 2>/dev/null || true
done
grep -h "embedding time" "$O"/b*.log | tail -4 || true
$PY benches/gpu/compare.py "$G/long.parquet" "$G/st" "$G/out-b16384" | tee "$O/st.json"

$PY - "$O/runs.txt" "$O/st.json" "$gpu" "$cpu" <<'PYEOF'
import json, sys
runs = [l.split() for l in open(sys.argv[1])]
st = json.loads(open(sys.argv[2]).read())
tokens = int(runs[1][2])
print(f"\n{st['rows']} IMDB reviews, {tokens:,} tokens (cut at 256); GPU {sys.argv[3]}; CPU {sys.argv[4]}")
print(f"GPU utilisation during the runs (nvidia-smi, 200 ms samples): see util-*.csv")
print(f"{'what':<52} {'seconds':>8} {'tokens/s':>11} {'x ST b32':>9}")
base = tokens / st["st_fp16_b32_seconds"]
for name, wall, tok, stream, model, rows in runs[1:]:
    r = int(tok) / float(wall)
    print(f"{'embedflow run, fp16, batch_tokens ' + name[1:] + ' (whole run)':<52} {float(wall):>8.2f} {r:>11,.0f} {r / base:>9.2f}   streaming {int(stream):,} tok/s, model load {model} s")
for key, label in [("st_fp16_b32", "sentence-transformers fp16 encode, batch 32"), ("st_fp16_b256", "sentence-transformers fp16 encode, batch 256"), ("st_fp32_b256", "sentence-transformers fp32 encode, batch 256")]:
    s = st[key + "_seconds"]; r = tokens / s
    print(f"{label:<52} {s:>8.2f} {r:>11,.0f} {r / base:>9.2f}")
print("cosine to sentence-transformers fp32: embedflow fp16", st["embedflow_fp16_vs_st_fp32"], "; sentence-transformers fp16", st["st_fp16_vs_st_fp32"])
PYEOF
