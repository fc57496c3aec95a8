//! The `Embedder`: tokenizer + ONNX Runtime session + pooling, matching sentence-transformers.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, anyhow, bail};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;
use tokenizers::{Encoding, PaddingParams, Tokenizer, TruncationParams};

use super::batch::plan_micro_batches;
use super::model::{ModelFiles, Pooling};
use super::runtime;

/// How to build an [`Embedder`].
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    pub model: String,
    pub batch_tokens: usize,
    pub batch_rows: usize,
    pub max_seq_length: Option<usize>,
    pub threads: Option<usize>,
    pub onnxruntime: Option<PathBuf>,
}

impl EmbedOptions {
    pub fn new(model: impl Into<String>) -> Self {
        EmbedOptions {
            model: model.into(),
            batch_tokens: 8192,
            batch_rows: 256,
            max_seq_length: None,
            threads: None,
            onnxruntime: None,
        }
    }

    pub fn from_spec(spec: &crate::config::EmbedSpec) -> Self {
        EmbedOptions {
            model: spec.model.clone(),
            batch_tokens: spec.batch_tokens,
            batch_rows: spec.batch_rows,
            max_seq_length: spec.max_seq_length,
            threads: spec.threads,
            onnxruntime: spec.onnxruntime.clone(),
        }
    }
}

/// Token ids and mask for one text, exactly as fed to the model (unpadded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

/// Turns texts into sentence-transformers-equal vectors.
pub struct Embedder {
    files: ModelFiles,
    tokenizer: Tokenizer,
    session: Mutex<Session>,
    input_names: InputNames,
    output_name: String,
    dim: usize,
    max_seq_length: usize,
    batch_tokens: usize,
    batch_rows: usize,
    tokens_seen: AtomicU64,
}

#[derive(Debug)]
struct InputNames {
    ids: String,
    mask: Option<String>,
    type_ids: Option<String>,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model", &self.files.name)
            .field("dim", &self.dim)
            .finish()
    }
}

fn ort_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("{e}")
}

impl Embedder {
    /// Resolves the model, loads ONNX Runtime and the tokenizer, and probes the output width.
    pub fn load(opts: &EmbedOptions) -> Result<Embedder> {
        let files = super::model::resolve(&opts.model)?;
        Self::from_files(files, opts)
    }

    pub fn from_files(files: ModelFiles, opts: &EmbedOptions) -> Result<Embedder> {
        let env = runtime::environment(opts.onnxruntime.as_deref())?;
        let max_seq_length = opts.max_seq_length.unwrap_or(files.settings.max_seq_length);

        let mut tokenizer = Tokenizer::from_file(&files.tokenizer).map_err(|e| {
            anyhow!(
                "model {}: cannot read {}: {e}",
                files.name,
                files.tokenizer.display()
            )
        })?;
        // tokenizer.json carries fixed padding/truncation; sentence-transformers overrides both:
        // truncate at max_seq_length (counting [CLS] and [SEP]) and pad per batch (done here).
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| anyhow!("model {}: tokenizer truncation: {e}", files.name))?;
        tokenizer.with_padding(None::<PaddingParams>);

        let threads = opts.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let session = Session::builder(&env)
            .map_err(ort_err)?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(ort_err)?
            .with_intra_threads(threads)
            .map_err(ort_err)?
            .with_inter_threads(1)
            .map_err(ort_err)?
            .with_intra_op_spinning(false)
            .map_err(ort_err)?
            .commit_from_file(&files.onnx)
            .map_err(|e| {
                anyhow!(
                    "model {}: cannot load {}: {e}",
                    files.name,
                    files.onnx.display()
                )
            })?;

        let names: Vec<String> = session
            .inputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let find = |n: &str| names.iter().find(|x| x.as_str() == n).cloned();
        let input_names = InputNames {
            ids: find("input_ids").with_context(|| {
                format!(
                    "model {}: {} has no input_ids input (inputs: {})",
                    files.name,
                    files.onnx.display(),
                    names.join(", ")
                )
            })?,
            mask: find("attention_mask"),
            type_ids: find("token_type_ids"),
        };
        let outputs: Vec<String> = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        let output_name = outputs
            .iter()
            .find(|n| n.as_str() == "last_hidden_state" || n.as_str() == "token_embeddings")
            .or(outputs.first())
            .cloned()
            .with_context(|| format!("model {}: the ONNX graph has no outputs", files.name))?;

        let mut embedder = Embedder {
            files,
            tokenizer,
            session: Mutex::new(session),
            input_names,
            output_name,
            dim: 0,
            max_seq_length,
            batch_tokens: opts.batch_tokens.max(1),
            batch_rows: opts.batch_rows.max(1),
            tokens_seen: AtomicU64::new(0),
        };
        // Probe the width with one tiny input: it also proves the model runs.
        let probe = embedder.tokenize(&[""])?;
        let (_, dim) = embedder.run_batch(&probe, &[0])?;
        embedder.dim = dim;
        embedder.tokens_seen.store(0, Ordering::Relaxed);
        Ok(embedder)
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn model_name(&self) -> &str {
        &self.files.name
    }

    pub fn model_files(&self) -> &ModelFiles {
        &self.files
    }

    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Tokens embedded so far (after truncation, without padding).
    pub fn tokens_seen(&self) -> u64 {
        self.tokens_seen.load(Ordering::Relaxed)
    }

    /// Tokenises texts as sentence-transformers does.
    pub fn tokenize(&self, texts: &[&str]) -> Result<Vec<Encoding>> {
        self.tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))
    }

    /// Token ids and attention mask for one text.
    pub fn tokens(&self, text: &str) -> Result<Tokens> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizer failed: {e}"))?;
        Ok(Tokens {
            ids: enc.get_ids().to_vec(),
            attention_mask: enc.get_attention_mask().to_vec(),
        })
    }

    /// Embeds texts; `None` rows get no vector. Returns row-major vectors (`dim` floats per row,
    /// zeros for `None` rows) in the input order.
    pub fn embed(&self, texts: &[Option<&str>]) -> Result<Vec<f32>> {
        let present: Vec<usize> = (0..texts.len()).filter(|&i| texts[i].is_some()).collect();
        let strs: Vec<&str> = present
            .iter()
            .map(|&i| texts[i].unwrap_or_default())
            .collect();
        let encodings = self.tokenize(&strs)?;
        let lengths: Vec<usize> = encodings.iter().map(|e| e.get_ids().len()).collect();
        let mut out = vec![0f32; texts.len() * self.dim];
        for batch in plan_micro_batches(&lengths, self.batch_tokens, self.batch_rows) {
            let (vectors, dim) = self.run_batch(&encodings, &batch)?;
            debug_assert_eq!(dim, self.dim);
            for (k, &j) in batch.iter().enumerate() {
                let row = present[j];
                out[row * dim..(row + 1) * dim].copy_from_slice(&vectors[k * dim..(k + 1) * dim]);
            }
        }
        Ok(out)
    }

    /// Runs one micro-batch (rows `batch` of `encodings`), returning pooled vectors in batch order.
    fn run_batch(&self, encodings: &[Encoding], batch: &[usize]) -> Result<(Vec<f32>, usize)> {
        let rows = batch.len();
        let seq = batch
            .iter()
            .map(|&i| encodings[i].get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = vec![0i64; rows * seq];
        let mut mask = vec![0i64; rows * seq];
        let mut tokens = 0u64;
        for (r, &i) in batch.iter().enumerate() {
            let e = &encodings[i];
            for (c, (&id, &m)) in e.get_ids().iter().zip(e.get_attention_mask()).enumerate() {
                ids[r * seq + c] = id as i64;
                mask[r * seq + c] = m as i64;
            }
            tokens += e.get_ids().len() as u64;
        }
        let shape = [rows as i64, seq as i64];
        let mut inputs: Vec<(
            std::borrow::Cow<'_, str>,
            ort::session::SessionInputValue<'_>,
        )> = Vec::new();
        inputs.push((
            self.input_names.ids.as_str().into(),
            Tensor::from_array((shape, ids)).map_err(ort_err)?.into(),
        ));
        if let Some(n) = &self.input_names.mask {
            inputs.push((
                n.as_str().into(),
                Tensor::from_array((shape, mask.clone()))
                    .map_err(ort_err)?
                    .into(),
            ));
        }
        if let Some(n) = &self.input_names.type_ids {
            inputs.push((
                n.as_str().into(),
                Tensor::from_array((shape, vec![0i64; rows * seq]))
                    .map_err(ort_err)?
                    .into(),
            ));
        }
        let mut session = self
            .session
            .lock()
            .map_err(|_| anyhow!("ONNX Runtime session poisoned by an earlier failure"))?;
        let outputs = session
            .run(inputs)
            .map_err(|e| anyhow!("model {}: inference failed: {e}", self.files.name))?;
        let (out_shape, hidden) = outputs[self.output_name.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| {
                anyhow!(
                    "model {}: output {}: {e}",
                    self.files.name,
                    self.output_name
                )
            })?;
        let dims: Vec<i64> = out_shape.iter().copied().collect();
        let pooled = match dims.as_slice() {
            [b, s, d] if *b as usize == rows && *s as usize == seq => pool(
                hidden,
                &mask,
                rows,
                seq,
                *d as usize,
                self.files.settings.pooling,
            ),
            // Models that pool inside the graph return [batch, dim].
            [b, d] if *b as usize == rows => {
                hidden.iter().copied().take(rows * *d as usize).collect()
            }
            other => bail!(
                "model {}: output {} has shape {other:?}, expected [{rows}, {seq}, dim] or [{rows}, dim]",
                self.files.name,
                self.output_name
            ),
        };
        drop(outputs);
        drop(session);
        let dim = pooled.len() / rows.max(1);
        let mut pooled = pooled;
        if self.files.settings.normalize {
            for v in pooled.chunks_mut(dim.max(1)) {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
        }
        self.tokens_seen.fetch_add(tokens, Ordering::Relaxed);
        Ok((pooled, dim))
    }
}

/// Pools token vectors `[rows, seq, dim]` under the attention mask.
fn pool(
    hidden: &[f32],
    mask: &[i64],
    rows: usize,
    seq: usize,
    dim: usize,
    how: Pooling,
) -> Vec<f32> {
    let mut out = vec![0f32; rows * dim];
    for r in 0..rows {
        let o = &mut out[r * dim..(r + 1) * dim];
        match how {
            Pooling::Cls => o.copy_from_slice(&hidden[r * seq * dim..r * seq * dim + dim]),
            Pooling::Mean => {
                let mut count = 0f32;
                for t in 0..seq {
                    if mask[r * seq + t] == 0 {
                        continue;
                    }
                    count += 1.0;
                    let h = &hidden[(r * seq + t) * dim..(r * seq + t + 1) * dim];
                    o.iter_mut().zip(h).for_each(|(a, b)| *a += b);
                }
                let denom = count.max(1e-9);
                o.iter_mut().for_each(|x| *x /= denom);
            }
            Pooling::Max => {
                o.iter_mut().for_each(|x| *x = f32::MIN);
                for t in 0..seq {
                    if mask[r * seq + t] == 0 {
                        continue;
                    }
                    let h = &hidden[(r * seq + t) * dim..(r * seq + t + 1) * dim];
                    o.iter_mut().zip(h).for_each(|(a, b)| *a = a.max(*b));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_masked_tokens() {
        // rows=1, seq=3, dim=2; the last token is padding.
        let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
        let v = pool(&hidden, &[1, 1, 0], 1, 3, 2, Pooling::Mean);
        assert_eq!(v, vec![2.0, 3.0]);
        let v = pool(&hidden, &[1, 1, 0], 1, 3, 2, Pooling::Max);
        assert_eq!(v, vec![3.0, 4.0]);
        let v = pool(&hidden, &[1, 1, 0], 1, 3, 2, Pooling::Cls);
        assert_eq!(v, vec![1.0, 2.0]);
    }
}
