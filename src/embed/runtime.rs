//! Finding and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! Search order: the pipeline's `embed.onnxruntime`, `ORT_DYLIB_PATH`, the `onnxruntime` wheel
//! of the Python environment embedflow is installed in (`pip install embedflow`), the setup
//! script's link in `$EMBEDFLOW_HOME/lib`, then the wheel in `$VIRTUAL_ENV` or `./.venv`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Result, anyhow, bail};

/// Where embedflow keeps its model cache and runtime link: `$EMBEDFLOW_HOME`, else
/// `$XDG_CACHE_HOME/embedflow`, else `~/.cache/embedflow`.
pub fn embedflow_home() -> PathBuf {
    if let Some(h) = std::env::var_os("EMBEDFLOW_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(|| PathBuf::from(".cache"))
        .join("embedflow")
}

/// The Python environment holding this executable, when it was installed there (a wheel puts
/// `embedflow` in `<env>/bin` beside `python`).
pub fn own_python_env() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?;
    let env = bin.parent()?;
    (bin.join("python").is_file() || bin.join("python3").is_file()).then(|| env.to_path_buf())
}

const INSTALL_HINT: &str = "install it with `bash scripts/setup.sh` (or `pip install onnxruntime`) and set \
ORT_DYLIB_PATH to .../site-packages/onnxruntime/capi/libonnxruntime.so.<version>";

/// Candidate library files, most specific first.
fn candidates(configured: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(p) = configured {
        out.push(p.to_path_buf());
        return out;
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        out.push(PathBuf::from(p));
        return out;
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    let own = own_python_env();
    if let Some(env) = &own {
        out.extend(wheel_libraries(env));
    }
    out.push(embedflow_home().join("lib").join("libonnxruntime.so"));
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    venvs.push(PathBuf::from(".venv"));
    for venv in venvs {
        out.extend(wheel_libraries(&venv));
    }
    out
}

/// The `onnxruntime` wheel's libraries in a Python environment, newest first.
fn wheel_libraries(env: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(libs) = std::fs::read_dir(env.join("lib")) else {
        return out;
    };
    for py in libs.flatten() {
        let capi = py.path().join("site-packages/onnxruntime/capi");
        let Ok(files) = std::fs::read_dir(&capi) else {
            continue;
        };
        let mut found: Vec<PathBuf> = files
            .flatten()
            .map(|f| f.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libonnxruntime.so.1"))
            })
            .collect();
        found.sort();
        out.extend(found.into_iter().rev());
    }
    out
}

/// Resolves the ONNX Runtime library path without loading it.
pub fn find_library(configured: Option<&Path>) -> Result<PathBuf> {
    let cands = candidates(configured);
    for c in &cands {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    match (
        configured,
        std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()),
    ) {
        (Some(p), _) => bail!(
            "ONNX Runtime library not found at {} (embed.onnxruntime): {INSTALL_HINT}",
            p.display()
        ),
        (None, Some(p)) => bail!(
            "ONNX Runtime library not found at {} (ORT_DYLIB_PATH): {INSTALL_HINT}",
            PathBuf::from(p).display()
        ),
        _ => bail!(
            "ONNX Runtime library not found (looked in {}): {INSTALL_HINT}",
            cands
                .iter()
                .map(|c| c.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

static ENVIRONMENT: OnceLock<
    std::result::Result<(PathBuf, ort::environment::Environment), String>,
> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns its environment.
pub fn environment(configured: Option<&Path>) -> Result<ort::environment::Environment> {
    let path = find_library(configured)?;
    let loaded = ENVIRONMENT.get_or_init(|| {
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load ONNX Runtime library {}: {e}; {INSTALL_HINT}",
                path.display()
            )
        })?;
        let env = builder
            .with_name("embedflow")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))?;
        Ok((path.clone(), env))
    });
    match loaded {
        Ok((loaded_path, env)) => {
            if loaded_path != &path {
                tracing::warn!(
                    "ONNX Runtime already loaded from {}; ignoring {}",
                    loaded_path.display(),
                    path.display()
                );
            }
            Ok(env.clone())
        }
        Err(msg) => Err(anyhow!("{msg}")),
    }
}
