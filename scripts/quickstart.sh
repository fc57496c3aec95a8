#!/usr/bin/env bash
# Sets up everything, embeds the bundled sample (data/sample.parquet) with
# pipelines/quickstart.yaml, then runs a semantic search over the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BIN="${CARGO_TARGET_DIR:-target}/release/embedflow"
"$BIN" run pipelines/quickstart.yaml
"$BIN" query pipelines/quickstart.yaml "how do I handle errors" -k 5
