#!/usr/bin/env bash
# Runs the test suite: sets up ONNX Runtime and the offline model if missing (no build step of
# its own: cargo test reuses the release build that scripts/quickstart.sh made), then the unit
# and integration tests.
# Tests that need ../shared (golden vectors, the fp32 model, real corpora) are marked ignored;
# they run when ../shared is there and are listed as ignored, with the reason, when it is not.
# EMBEDFLOW_REQUIRE_SHARED=1 (set by .ci/run) makes its absence a failure.
# The Airflow test (scripts/test-airflow.sh: the wheel, Airflow 3.3.2 from PyPI, the example
# DAGs) runs beside the Rust tests: its wheel and test server are built first (with cargo and
# maturin), then installing Airflow and the DAG runs start in the background, and their output
# follows the Rust tests'. EMBEDFLOW_SKIP_AIRFLOW=1 skips it, and says so. The command fails if either fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-build
# What the tests and the Airflow test run, compiled in one cargo invocation (its jobs side by
# side): the test binary, the test-only crates and the Pinecone test server.
cargo build --release --locked --workspace --bins --tests
airflow_pid=
if [ "${EMBEDFLOW_SKIP_AIRFLOW:-}" = 1 ]; then
  echo "test: SKIPPED: the Airflow test (EMBEDFLOW_SKIP_AIRFLOW=1)" >&2
else
  bash scripts/test-airflow.sh build
  airflow_log=$(mktemp)
  # In a process group of its own: Ctrl-C or a failure here stops the DAG runs and their
  # servers too.
  setsid bash scripts/test-airflow.sh run > "$airflow_log" 2>&1 &
  airflow_pid=$!
  trap 'kill -- -"$airflow_pid" 2>/dev/null; rm -f "$airflow_log"' EXIT
fi
rust=0
shared="${EMBEDFLOW_SHARED:-../shared}"
if [ -d "$shared/golden" ]; then
  cargo test --release --locked --workspace -- --include-ignored || rust=$?
else
  if [ "${EMBEDFLOW_REQUIRE_SHARED:-}" = 1 ]; then
    echo "test: $shared is missing and EMBEDFLOW_REQUIRE_SHARED=1" >&2
    exit 1
  fi
  echo "test: SKIPPED: $shared not found; the parity tests that need it are listed as ignored below" >&2
  cargo test --release --locked --workspace || rust=$?
fi
airflow=0
if [ -n "$airflow_pid" ]; then
  wait "$airflow_pid" || airflow=$?
  trap - EXIT
  echo "test: the Airflow test (it ran beside the Rust tests):" >&2
  cat "$airflow_log" >&2
  rm -f "$airflow_log"
  [ "$airflow" = 0 ] || echo "test: the Airflow test FAILED (exit $airflow)" >&2
fi
[ "$rust" = 0 ] || echo "test: the Rust tests FAILED (exit $rust)" >&2
[ "$rust" = 0 ] && [ "$airflow" = 0 ]
