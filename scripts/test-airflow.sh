#!/usr/bin/env bash
# The Airflow test: builds the embedflow wheel from the release build, installs it with
# Airflow 3.3.2 from PyPI (with uv) into a venv of their own, prepares the default model with
# `embedflow setup` in a fresh EMBEDFLOW_HOME, and runs tests/airflow/test_dags.py (airflow db
# migrate, then airflow dags test of the example DAGs). Called by scripts/test.sh.
#   bash scripts/test-airflow.sh            # both phases
#   bash scripts/test-airflow.sh prepare    # the wheel, the venv and the test server (cargo, maturin)
#   bash scripts/test-airflow.sh run        # the DAG runs, from what `prepare` installed
# scripts/test.sh runs `prepare` before `cargo test` (maturin takes the release binary out of
# the target folder while it packs it: nothing may run tests from there meanwhile) and `run`
# beside it: `run` uses no cargo and nothing in the target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
EMBEDFLOW_HOME=${EMBEDFLOW_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/embedflow}
AIRFLOW_VERSION=3.3.2
VENV="$EMBEDFLOW_HOME/airflow-venv"
say() { printf 'airflow test: %s\n' "$*" >&2; }
start=$(date +%s)
PHASE=${1:-all}
case "$PHASE" in all | prepare | run) ;; *) say "unknown phase $PHASE (all, prepare or run)"; exit 2 ;; esac
# The test server's copy the DAG runs use: cargo may re-link the one in the target folder.
SERVER="$VENV/bin/pinecone-test-server"

prepare() {
  # Uncompressed: the wheel is installed once, here; deflating the 200 MB binary took 6 s.
  WHEEL=$(bash scripts/build-wheel.sh --compression-method stored | tail -n 1)
  say "wheel $WHEEL ($(du -m "$WHEEL" | cut -f1) MB)"
  # With the whole workspace, so the features are those of the release build (no rebuild).
  cargo build --release --locked --workspace --bins
  BUILT_SERVER="${CARGO_TARGET_DIR:-target}/release/pinecone-test-server"

  # uv (from PyPI, into the setup's Python environment) installs Airflow's ~150 packages in
  # seconds where pip takes a minute.
  SETUP_VENV="$EMBEDFLOW_HOME/venv"
  UV_VERSION=0.13.9
  if [ "$("$SETUP_VENV/bin/uv" --version 2>/dev/null | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    say "installing uv $UV_VERSION from PyPI"
    "$SETUP_VENV/bin/pip" install --quiet --disable-pip-version-check "uv==$UV_VERSION"
  fi
  UV=("$SETUP_VENV/bin/uv" pip install --quiet --python "$VENV/bin/python")
  if ! "$VENV/bin/python" -c "import airflow, sys; sys.exit(airflow.__version__ != '$AIRFLOW_VERSION')" 2>/dev/null; then
    say "installing apache-airflow $AIRFLOW_VERSION from PyPI into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "${UV[@]}" "apache-airflow==$AIRFLOW_VERSION"
  fi
  # Byte-code, as pip writes it at install time and uv does not by default: without it every
  # `airflow` command (and every task process) compiles Airflow's modules again where
  # PYTHONDONTWRITEBYTECODE is set (CI machines often do), about 2 s each: 87 s -> 71 s.
  BYTECODE="$VENV/.embedflow-bytecode-v1"
  if [ ! -f "$BYTECODE" ]; then
    say "compiling Airflow's byte-code in $VENV"
    "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null || true
    touch "$BYTECODE"
  fi
  "${UV[@]}" --reinstall-package embedflow "$WHEEL"
  cp "$BUILT_SERVER" "$SERVER"
  say "prepared in $(( $(date +%s) - start )) s"
}

run_dags() {
  if [ ! -x "$SERVER" ] || [ ! -x "$VENV/bin/airflow" ]; then
    say "nothing prepared in $VENV: run bash scripts/test-airflow.sh prepare first"; exit 1
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # A fresh home: `embedflow setup` must prepare the model on its own, as after a pip install.
  export EMBEDFLOW_HOME="$work/embedflow-home"
  export PATH="$VENV/bin:$PATH"
  unset VIRTUAL_ENV ORT_DYLIB_PATH EMBEDFLOW_PYTHON
  embedflow setup
  AIRFLOW_HOME="$work/airflow" REPO="$REPO" PINECONE_TEST_SERVER="$SERVER" \
    "$VENV/bin/python" tests/airflow/test_dags.py
  say "passed in $(( $(date +%s) - start )) s"
}

case "$PHASE" in
  prepare) prepare ;;
  run) run_dags ;;
  *) prepare; run_dags ;;
esac
