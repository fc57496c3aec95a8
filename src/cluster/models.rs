//! Models on an executor: loaded the first time a task runs `embed()` with given settings, then
//! shared by every task of the process (one ONNX Runtime session pool per model, not per task).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Result, anyhow};

use crate::embed::{EmbedSpec, Embedder};

/// ONNX Runtime threads per model on this process (`embedflow executor --threads`): the
/// executor's own setting wins over the client's `embed.threads`.
static THREADS: OnceLock<usize> = OnceLock::new();

static MODELS: OnceLock<Mutex<HashMap<String, Arc<Embedder>>>> = OnceLock::new();

/// Sets this process's ONNX Runtime threads per model.
pub fn set_threads(threads: usize) {
    let _ = THREADS.set(threads.max(1));
}

/// The embedder for `spec`, loaded once per process.
pub fn shared_embedder(spec: &EmbedSpec) -> Result<Arc<Embedder>> {
    let mut spec = spec.clone();
    if let Some(threads) = THREADS.get() {
        spec.threads = Some(*threads);
    }
    let key = serde_json::to_string(&spec)?;
    // Held while loading: tasks that start together wait for one load rather than racing.
    let mut models = MODELS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| anyhow!("the model cache is poisoned by an earlier panic"))?;
    if let Some(e) = models.get(&key) {
        return Ok(Arc::clone(e));
    }
    let embedder = Arc::new(Embedder::load(&spec)?);
    tracing::info!(
        "model {} loaded on this executor ({} dimensions, {} ONNX Runtime threads)",
        embedder.model_name(),
        embedder.dim(),
        spec.threads.map_or("all".to_string(), |t| t.to_string())
    );
    models.insert(key, Arc::clone(&embedder));
    Ok(embedder)
}
