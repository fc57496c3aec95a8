#!/usr/bin/env bash
# Runs the test suite: sets up ONNX Runtime and the offline model if missing (no build step of
# its own: cargo test builds what it needs), then the unit and integration tests.
# Tests that need ../shared (golden vectors, the fp32 model, real corpora) skip with a message
# when it is absent; EMBEDFLOW_REQUIRE_SHARED=1 (set by .ci/run) makes that a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-build
cargo test --release --locked --workspace
