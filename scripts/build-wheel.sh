#!/usr/bin/env bash
# Builds the embedflow wheel (dist/embedflow-<version>-py3-none-<platform>.whl) with maturin
# (pyproject.toml: bindings = "bin"), from the release build the tests use: same profile, same
# features, same CARGO_TARGET_DIR, so cargo finds everything built and only packages it.
#   pip install dist/embedflow-*.whl     # embedflow on the PATH, onnxruntime beside it
#   embedflow setup                      # the offline default model, into the model cache
# Arguments go to `maturin build` (the Airflow test passes `--compression-method stored`).
set -euo pipefail
cd "$(dirname "$0")/.."
EMBEDFLOW_HOME=${EMBEDFLOW_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/embedflow}
VENV="$EMBEDFLOW_HOME/venv"
MATURIN_VERSION=1.16.0
say() { printf 'wheel: %s\n' "$*" >&2; }
if [ ! -x "$VENV/bin/python" ]; then
  say "no Python environment in $VENV: run bash scripts/setup.sh first"; exit 1
fi
if [ "$("$VENV/bin/maturin" --version 2>/dev/null)" != "maturin $MATURIN_VERSION" ]; then
  say "installing maturin $MATURIN_VERSION from PyPI"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "maturin==$MATURIN_VERSION"
fi
rm -f dist/embedflow-*.whl
"$VENV/bin/maturin" build --release --out dist "$@" >&2
ls dist/embedflow-*.whl
