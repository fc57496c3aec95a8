//! Preparing the model for the requested precision once, and caching the result.
//!
//! fp32 runs the model as given. int8 and fp16 models are produced by ONNX Runtime's own Python
//! tools (its quantiser and transformer optimiser, from the same `onnxruntime` wheel that provides
//! the shared library), run once through `prepare_model.py` and cached under
//! `$EMBEDFLOW_HOME/prepared/<sha256 of model.onnx>-<precision>-v<recipe>/model.onnx`.
//! Later runs, and other pipelines on the same model, load the cached file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::model::ModelFiles;
use super::runtime::embedflow_home;
use super::spec::Precision;

const SCRIPT: &str = include_str!("prepare_model.py");
/// Bump a precision's version when its recipe in `prepare_model.py` changes, so old cache
/// entries are not reused (fp16 5: the mean-pooled output; int8 5: per-axis quantiser).
fn recipe_version(precision: Precision) -> u32 {
    match precision {
        Precision::Fp16 => 5,
        Precision::Int8 => 5,
        Precision::Fp32 => 4,
    }
}

/// The ONNX file to load for `precision`, preparing and caching it when needed.
pub fn model_for(
    files: &ModelFiles,
    precision: Precision,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<PathBuf> {
    if precision == Precision::Fp32 {
        return Ok(files.onnx.clone());
    }
    let digest = file_sha256(&files.onnx)?;
    let dir = embedflow_home().join("prepared").join(format!(
        "{}-{}-v{}",
        &digest[..16],
        precision.as_str(),
        recipe_version(precision)
    ));
    let target = dir.join("model.onnx");
    if target.is_file() {
        tracing::debug!(
            "{} model from cache: {}",
            precision.as_str(),
            target.display()
        );
        return Ok(target);
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the model cache {}", dir.display()))?;
    let prepared = prepare_into(files, precision, tokenizer, &dir, &target);
    if prepared.is_err() {
        // Leave no empty cache entry behind; fails harmlessly if another run filled it meanwhile.
        let _ = std::fs::remove_dir(&dir);
    }
    prepared.map(|()| target)
}

/// `onnx` with its weights in a file of their own beside the graph, made once and cached under
/// `$EMBEDFLOW_HOME/prepared/<key>-weights-v1/`; `save` writes such a copy of its first
/// argument to its second (ONNX Runtime, all optimisations off: the same graph, the same
/// vectors bit for bit). ONNX Runtime maps weights kept apart from the page cache, where a
/// single file is read whole into memory and every weight copied out of it: starting a
/// session on all-MiniLM-L6-v2 took 51,000 page faults and 0.2 s of CPU from one file, 11,500
/// and 0.075 s this way, most of what a short run (a query, a small incremental day) costs.
/// The key is the file's path, size and modification time (hashing 90 MB would take the time
/// saved). Anything that fails here (a read-only home, a full disk) leaves `onnx` as it is.
pub fn with_weights_beside(onnx: &Path, save: impl FnOnce(&Path, &Path) -> Result<()>) -> PathBuf {
    match weights_beside(onnx, save) {
        Ok(path) => path,
        Err(e) => {
            tracing::debug!(
                "{}: loaded as it is (no copy with its weights beside it: {e:#})",
                onnx.display()
            );
            onnx.to_path_buf()
        }
    }
}

fn weights_beside(onnx: &Path, save: impl FnOnce(&Path, &Path) -> Result<()>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let source = onnx.canonicalize()?;
    let meta = std::fs::metadata(&source)?;
    let modified = meta
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(source.as_os_str().as_encoded_bytes());
    h.update(format!("\0{}\0{}", meta.len(), modified.as_nanos()).as_bytes());
    let key = hex::encode(&h.finalize()[..8]);
    let cache = embedflow_home().join("prepared");
    let dir = cache.join(format!("{key}-weights-v1"));
    let target = dir.join("model.onnx");
    if target.is_file() && dir.join(WEIGHTS_FILE).is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&cache)?;
    let tmp = tempfile::Builder::new()
        .prefix(".weights-")
        .tempdir_in(&cache)?;
    save(&source, &tmp.path().join("model.onnx"))?;
    for name in ["model.onnx", WEIGHTS_FILE] {
        std::fs::set_permissions(tmp.path().join(name), meta.permissions())?;
    }
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    // Another run may have stored the same copy meanwhile: then this one is dropped.
    if std::fs::rename(tmp.path(), &dir).is_ok() {
        let _ = tmp.keep();
    }
    if !target.is_file() {
        bail!("{} was not written", target.display());
    }
    tracing::debug!(
        "{}: weights beside the graph in {}",
        onnx.display(),
        dir.display()
    );
    Ok(target)
}

/// The weights' file name beside a graph written by [`with_weights_beside`]'s `save`.
pub const WEIGHTS_FILE: &str = "model.onnx.data";

/// Runs `prepare_model.py` into a temporary file in `dir` and moves it to `target`.
fn prepare_into(
    files: &ModelFiles,
    precision: Precision,
    tokenizer: &tokenizers::Tokenizer,
    dir: &Path,
    target: &Path,
) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix(".model-")
        .suffix(".onnx")
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in the model cache {}", dir.display()))?;
    let python = python_interpreter();
    tracing::info!(
        "model {}: preparing the {} model once with {} (cached in {})",
        files.name,
        precision.as_str(),
        python.display(),
        dir.display()
    );
    let mut cmd = Command::new(&python);
    cmd.arg("-c")
        .arg(SCRIPT)
        .arg(&files.onnx)
        .arg(tmp.path())
        .arg(precision.as_str());
    let mut calibration = None;
    match precision {
        Precision::Int8 => {
            let ids = calibration_ids(tokenizer, files.settings.max_seq_length)?;
            let file = tempfile::Builder::new()
                .prefix(".calibration-")
                .suffix(".jsonl")
                .tempfile_in(dir)
                .and_then(|f| std::fs::write(f.path(), ids).map(|()| f))
                .with_context(|| format!("cannot write in the model cache {}", dir.display()))?;
            cmd.arg(file.path());
            calibration = Some(file);
        }
        Precision::Fp16 => {
            let (heads, hidden) = attention_shape(&files.dir)?;
            cmd.arg(heads.to_string()).arg(hidden.to_string());
        }
        Precision::Fp32 => {}
    }
    let out = cmd.output().with_context(|| {
        format!(
            "embed.precision {}: cannot run Python ({}) to prepare the model: {PYTHON_HINT}",
            precision.as_str(),
            python.display()
        )
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        if out.status.code() == Some(3) {
            bail!(
                "embed.precision {}: {} lacks what prepares the model ({last}): {PYTHON_HINT}",
                precision.as_str(),
                python.display()
            );
        }
        bail!(
            "model {}: preparing the {} model failed: {last}",
            files.name,
            precision.as_str()
        );
    }
    let report = String::from_utf8_lossy(&out.stdout);
    if let Some(agreement) = report
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["calibration_min_cosine"].as_f64())
    {
        if agreement < 0.99 {
            tracing::warn!(
                "model {}: the int8 model agrees with fp32 only to a minimum cosine of {agreement:.4} on the calibration text; use precision fp32 where that matters",
                files.name
            );
        } else {
            tracing::info!(
                "model {}: int8 vs fp32 minimum cosine {agreement:.4} on the calibration text",
                files.name
            );
        }
    }
    // tempfile creates 0600 files; the cache is as readable as the model it came from.
    drop(calibration);
    std::fs::metadata(&files.onnx)
        .and_then(|m| std::fs::set_permissions(tmp.path(), m.permissions()))
        .with_context(|| format!("cannot store {}", target.display()))?;
    tmp.persist(target)
        .with_context(|| format!("cannot store {}", target.display()))?;
    // The rest of the model folder (tokenizer, pooling) stays where it is: only the graph changes.
    Ok(())
}

/// Paragraphs of the bundled sample (The Rust Programming Language, MIT OR Apache-2.0) whose
/// activations set the int8 smoothing scales.
const CALIBRATION_TEXT: &str = include_str!("calibration.txt");

/// The calibration paragraphs as the model's token ids, one JSON object per line, truncated at
/// the model's own `max_seq_length` (not a pipeline's override: the cached model is shared).
fn calibration_ids(tokenizer: &tokenizers::Tokenizer, max_seq_length: usize) -> Result<String> {
    let mut tokenizer = tokenizer.clone();
    tokenizer
        .with_truncation(Some(tokenizers::TruncationParams {
            max_length: max_seq_length,
            ..Default::default()
        }))
        .map_err(|e| anyhow::anyhow!("tokenizer truncation: {e}"))?;
    let texts: Vec<&str> = CALIBRATION_TEXT.lines().filter(|l| !l.is_empty()).collect();
    let encodings = tokenizer
        .encode_batch(texts, true)
        .map_err(|e| anyhow::anyhow!("tokenizer failed on the calibration text: {e}"))?;
    Ok(encodings
        .iter()
        .map(|e| serde_json::json!({ "ids": e.get_ids() }).to_string() + "\n")
        .collect())
}

const PYTHON_HINT: &str = "run `bash scripts/setup.sh` (it installs onnxruntime, onnx and onnx-ir \
into $EMBEDFLOW_HOME/venv), or point EMBEDFLOW_PYTHON at a Python that has them";

/// `EMBEDFLOW_PYTHON`, else the Python environment embedflow is installed in, else the setup's
/// environment, else `python3`.
pub fn python_interpreter() -> PathBuf {
    if let Some(p) = std::env::var_os("EMBEDFLOW_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(env) = super::runtime::own_python_env() {
        return env.join("bin/python");
    }
    let venv = embedflow_home().join("venv/bin/python");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Attention heads and hidden size from the model's `config.json` (for the fp16 fusions).
fn attention_shape(dir: &Path) -> Result<(u64, u64)> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "embed.precision fp16 needs the model's config.json (num_attention_heads, hidden_size): cannot read {}",
            path.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("invalid JSON in {}", path.display()))?;
    let field = |k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("{} has no {k}", path.display()))
    };
    Ok((field("num_attention_heads")?, field("hidden_size")?))
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}
