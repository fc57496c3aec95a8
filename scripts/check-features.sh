#!/usr/bin/env bash
# Fails when `cargo build --release` and `cargo test --release --workspace` would compile a shared
# crate with different features: then the tests could not reuse the release build, and a fresh
# machine would compile DataFusion twice. Compares cargo's unit graphs (no compiling).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
RUSTC_BOOTSTRAP=1 cargo build --release --locked --unit-graph -Z unstable-options >"$tmp/build.json"
RUSTC_BOOTSTRAP=1 cargo test --release --locked --workspace --no-run --unit-graph -Z unstable-options >"$tmp/test.json"
python3 - "$tmp/build.json" "$tmp/test.json" <<'PY'
import json, sys

def units(path):
    out = {}
    for u in json.load(open(path))["units"]:
        key = (u["pkg_id"], u["target"]["name"], u["mode"], u["profile"].get("opt_level"))
        out.setdefault(key, set()).add(tuple(sorted(u["features"])))
    return out

build, test = units(sys.argv[1]), units(sys.argv[2])
drift = [(k, build[k], test[k]) for k in sorted(build) if k in test and build[k] != test[k]]
for (pkg, target, mode, opt), b, t in drift:
    print(f"feature drift: {pkg.split('#')[-1]} ({target}, {mode}, opt-level {opt}): build {sorted(b)} test {sorted(t)}")
if drift:
    print("the test build would recompile these (and all that depends on them): name the features in Cargo.toml", file=sys.stderr)
    sys.exit(1)
print("features: the test build reuses the release build")
PY
