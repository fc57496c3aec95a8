#!/usr/bin/env bash
# The Airflow test: builds the embedflow wheel from the release build, installs it with
# Airflow 3.3.2 from PyPI (with uv) into a venv of their own, prepares the default model with
# `embedflow setup` in a fresh EMBEDFLOW_HOME, and runs tests/airflow/test_dags.py (airflow db
# migrate, then airflow dags test of the example DAGs). Called by scripts/test.sh.
#   bash scripts/test-airflow.sh            # both phases
#   bash scripts/test-airflow.sh build      # the wheel and the Pinecone test server (cargo, maturin)
#   bash scripts/test-airflow.sh run        # Airflow's venv, the wheel installed, the DAG runs
# scripts/test.sh runs `build` before `cargo test` (maturin takes the release binary out of
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
case "$PHASE" in all | build | run) ;; *) say "unknown phase $PHASE (all, build or run)"; exit 2 ;; esac
# What `build` leaves for `run`: the wheel and a copy of the test server (cargo may re-link the
# one in the target folder while the DAGs run).
BUILT="$EMBEDFLOW_HOME/airflow-test"
SERVER="$BUILT/pinecone-test-server"

build() {
  mkdir -p "$BUILT"
  rm -f "$BUILT"/embedflow-*.whl
  # Uncompressed: the wheel is installed once; deflating the 200 MB binary took 6 s.
  WHEEL=$(bash scripts/build-wheel.sh --compression-method stored | tail -n 1)
  mv "$WHEEL" "$BUILT/"
  say "wheel $BUILT/$(basename "$WHEEL") ($(du -m "$BUILT/$(basename "$WHEEL")" | cut -f1) MB)"
  # With the whole workspace, so the features are those of the release build (no rebuild).
  cargo build --release --locked --workspace --bins
  cp "${CARGO_TARGET_DIR:-target}/release/pinecone-test-server" "$SERVER"
  say "built in $(( $(date +%s) - start )) s"
}

install() {
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
  "${UV[@]}" --reinstall-package embedflow "$BUILT"/embedflow-*.whl
  say "installed in $(( $(date +%s) - start )) s"
}

run_dags() {
  if [ ! -x "$SERVER" ] || ! ls "$BUILT"/embedflow-*.whl > /dev/null 2>&1; then
    say "nothing built in $BUILT: run bash scripts/test-airflow.sh build first"; exit 1
  fi
  install
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # A fresh home: `embedflow setup` must prepare the model on its own, as after a pip install.
  export EMBEDFLOW_HOME="$work/embedflow-home"
  export PATH="$VENV/bin:$PATH"
  unset VIRTUAL_ENV ORT_DYLIB_PATH EMBEDFLOW_PYTHON
  # Byte-code written as modules are first imported (`airflow db migrate` runs alone first, the
  # DAG runs then find it), even where PYTHONDONTWRITEBYTECODE is set (CI machines often do):
  # without it every `airflow` command compiles Airflow's modules again, about 2 s each.
  # Compiling the whole venv ahead (`compileall`) cost 23 s of CPU for modules never imported.
  unset PYTHONDONTWRITEBYTECODE
  embedflow setup
  AIRFLOW_HOME="$work/airflow" REPO="$REPO" PINECONE_TEST_SERVER="$SERVER" \
    "$VENV/bin/python" tests/airflow/test_dags.py
  say "passed in $(( $(date +%s) - start )) s"
}

case "$PHASE" in
  build) build ;;
  run) run_dags ;;
  *) build; run_dags ;;
esac
