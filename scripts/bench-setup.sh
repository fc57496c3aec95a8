#!/usr/bin/env bash
# Python side of the benchmarks, from PyPI: the official Pinecone SDK (benches/pinecone_upload.rs).
# Installs into $EMBEDFLOW_HOME/bench-venv (default ~/.cache/embedflow/bench-venv).
set -euo pipefail
home="${EMBEDFLOW_HOME:-$HOME/.cache/embedflow}"
venv="$home/bench-venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "pinecone==10.2.0"
echo "benchmark Python ready: $venv/bin/python"
