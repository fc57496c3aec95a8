//! `embed.sparse: bm25`: sparse vectors for Pinecone's hybrid search, made as pinecone-text's
//! `BM25Encoder` makes them. A token's index is its MurmurHash3 (32-bit, seed 0, unsigned); a
//! document's values are BM25 term-frequency weights, `tf / (k1 (1 - b + b len/avgdl) + tf)`; a
//! query's values are IDF weights, `log((n_docs + 1) / (df + 0.5))`, normalised to sum to one.
//! The fitted parameters (`avgdl`, `n_docs`, `doc_freq`, the settings) are a JSON file in
//! pinecone-text's format, which `BM25Encoder().load(path)` reads and which embedflow reads back
//! for queries and later runs ([`Bm25Params`]).
//!
//! The tokenizer follows pinecone-text's ([`tokenizer`], which says where it differs).

pub mod spec;
pub mod tokenizer;
pub mod udf;

pub use spec::{SparseMethod, SparseSpec};

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::storage::{self, StorageSpec};

use crate::error::invalid;
use tokenizer::{Bm25Tokenizer, TokenizerSettings};

/// pinecone-text's `doc_freq`: parallel lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DocFreq {
    pub indices: Vec<u32>,
    pub values: Vec<f64>,
}

/// The parameters file, field for field pinecone-text's `BM25Encoder.get_params()`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bm25Params {
    pub avgdl: f64,
    pub n_docs: u64,
    pub doc_freq: DocFreq,
    pub b: f64,
    pub k1: f64,
    pub lower_case: bool,
    pub remove_punctuation: bool,
    pub remove_stopwords: bool,
    pub stem: bool,
    pub language: String,
}

impl Bm25Params {
    /// Reads a parameters file's text (`what` names it in errors).
    pub fn parse(what: &str, text: &[u8]) -> Result<Bm25Params> {
        let p: Bm25Params = serde_json::from_slice(text)
            .with_context(|| format!("{what} is not a BM25 parameters file"))?;
        if p.language != "english" {
            bail!(
                "{what}: language `{}`: only english is supported",
                p.language
            );
        }
        if p.doc_freq.indices.len() != p.doc_freq.values.len() {
            bail!("{what}: doc_freq has more indices than values, or fewer");
        }
        if p.stem && !p.lower_case {
            bail!("{what}: stem needs lower_case, as in pinecone-text");
        }
        Ok(p)
    }

    fn tokenizer_settings(&self) -> TokenizerSettings {
        TokenizerSettings {
            lower_case: self.lower_case,
            remove_punctuation: self.remove_punctuation,
            remove_stopwords: self.remove_stopwords,
            stem: self.stem,
        }
    }

    /// What shapes a document's sparse vector (for fingerprints): not the document
    /// frequencies, which only queries use.
    pub fn document_settings(&self) -> String {
        format!(
            "bm25 k1={} b={} avgdl={} lower_case={} remove_punctuation={} remove_stopwords={} stem={}",
            self.k1,
            self.b,
            self.avgdl,
            self.lower_case,
            self.remove_punctuation,
            self.remove_stopwords,
            self.stem
        )
    }
}

/// A sparse vector: token indices and their weights.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sparse {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

/// MurmurHash3 (x86, 32-bit, seed 0) of the token's UTF-8 bytes: `mmh3.hash(token, signed=False)`.
pub fn token_index(token: &str) -> u32 {
    murmur3::murmur3_32(&mut Cursor::new(token.as_bytes()), 0).unwrap_or_default()
}

/// The fitted encoder.
pub struct Bm25 {
    params: Bm25Params,
    doc_freq: HashMap<u32, f64>,
    tokenizer: Bm25Tokenizer,
}

impl std::fmt::Debug for Bm25 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bm25")
            .field("n_docs", &self.params.n_docs)
            .field("avgdl", &self.params.avgdl)
            .finish()
    }
}

impl Bm25 {
    pub fn new(params: Bm25Params) -> Bm25 {
        let doc_freq = params
            .doc_freq
            .indices
            .iter()
            .copied()
            .zip(params.doc_freq.values.iter().copied())
            .collect();
        Bm25 {
            tokenizer: Bm25Tokenizer::new(params.tokenizer_settings()),
            doc_freq,
            params,
        }
    }

    pub fn params(&self) -> &Bm25Params {
        &self.params
    }

    /// Token indices and their counts, in the order the tokens first appear (pinecone-text's
    /// `Counter`).
    pub fn term_frequencies(&self, text: &str) -> (Vec<u32>, Vec<u32>) {
        term_frequencies(&self.tokenizer, text)
    }

    pub fn encode_document(&self, text: &str) -> Sparse {
        let (indices, tf) = self.term_frequencies(text);
        let len: u32 = tf.iter().sum();
        let p = &self.params;
        let norm = p.k1 * (1.0 - p.b + p.b * (f64::from(len) / p.avgdl));
        let values = tf
            .iter()
            .map(|&t| (f64::from(t) / (norm + f64::from(t))) as f32)
            .collect();
        Sparse { indices, values }
    }

    pub fn encode_query(&self, text: &str) -> Sparse {
        let (indices, _) = self.term_frequencies(text);
        let n = self.params.n_docs as f64;
        let idf: Vec<f64> = indices
            .iter()
            .map(|i| {
                let df = self.doc_freq.get(i).copied().unwrap_or(1.0);
                ((n + 1.0) / (df + 0.5)).ln()
            })
            .collect();
        let sum: f64 = idf.iter().sum();
        // pinecone-text divides by the sum whatever it is; a zero sum (no tokens, or only
        // tokens in every document) would give NaN, which no index takes: the weights stay.
        let values = idf
            .iter()
            .map(|v| if sum != 0.0 { v / sum } else { *v } as f32)
            .collect();
        Sparse { indices, values }
    }
}

fn term_frequencies(tokenizer: &Bm25Tokenizer, text: &str) -> (Vec<u32>, Vec<u32>) {
    let mut indices: Vec<u32> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    let mut at: HashMap<u32, usize> = HashMap::new();
    for token in tokenizer.tokens(text) {
        let index = token_index(&token);
        match at.get(&index) {
            Some(&k) => counts[k] += 1,
            None => {
                at.insert(index, indices.len());
                indices.push(index);
                counts.push(1);
            }
        }
    }
    (indices, counts)
}

/// Fits BM25 on a corpus, one text at a time, as `BM25Encoder.fit` does: texts without tokens
/// are not counted.
pub struct Bm25Fit {
    tokenizer: Bm25Tokenizer,
    settings: TokenizerSettings,
    k1: f64,
    b: f64,
    n_docs: u64,
    total_len: u64,
    doc_freq: HashMap<u32, u64>,
}

impl Bm25Fit {
    pub fn new(k1: f64, b: f64) -> Bm25Fit {
        let settings = TokenizerSettings::default();
        Bm25Fit {
            tokenizer: Bm25Tokenizer::new(settings),
            settings,
            k1,
            b,
            n_docs: 0,
            total_len: 0,
            doc_freq: HashMap::new(),
        }
    }

    pub fn add(&mut self, text: &str) {
        let (indices, tf) = term_frequencies(&self.tokenizer, text);
        if indices.is_empty() {
            return;
        }
        self.n_docs += 1;
        self.total_len += tf.iter().map(|&t| u64::from(t)).sum::<u64>();
        for i in indices {
            *self.doc_freq.entry(i).or_default() += 1;
        }
    }

    /// The parameters; an error when no text had a token.
    pub fn finish(self) -> Result<Bm25Params> {
        if self.n_docs == 0 {
            bail!("embed.sparse: no text of the source has a word to fit BM25 on");
        }
        let mut pairs: Vec<(u32, u64)> = self.doc_freq.into_iter().collect();
        pairs.sort_unstable();
        Ok(Bm25Params {
            avgdl: self.total_len as f64 / self.n_docs as f64,
            n_docs: self.n_docs,
            doc_freq: DocFreq {
                indices: pairs.iter().map(|p| p.0).collect(),
                values: pairs.iter().map(|p| p.1 as f64).collect(),
            },
            b: self.b,
            k1: self.k1,
            lower_case: self.settings.lower_case,
            remove_punctuation: self.settings.remove_punctuation,
            remove_stopwords: self.settings.remove_stopwords,
            stem: self.settings.stem,
            language: "english".into(),
        })
    }
}

/// Reads the parameters file at `path` (local or `s3://`); `None` when there is none.
pub async fn load_params(path: &str, storage: &StorageSpec) -> Result<Option<Bm25Params>> {
    let bytes = match storage::read_small(path, storage).await? {
        Some(b) => b,
        None => return Ok(None),
    };
    Bm25Params::parse(&format!("BM25 parameters file {path}"), &bytes).map(Some)
}

async fn save_params(path: &str, storage: &StorageSpec, params: &Bm25Params) -> Result<()> {
    let body = serde_json::to_vec(params)?;
    storage::write_small(path, storage, body)
        .await
        .with_context(|| format!("cannot write the BM25 parameters to {path}"))
}

/// The encoder of `spec`: read from its parameters file when there is one, else fitted on
/// `texts` (a frame of one text column) and written there first.
pub async fn fit_or_load(
    spec: &SparseSpec,
    texts: DataFrame,
    storage: &StorageSpec,
) -> Result<Arc<Bm25>> {
    let path = spec.params.as_deref().ok_or_else(|| {
        invalid(
            "embed.sparse.params",
            "name the file the fitted BM25 parameters go to (queries and later runs read it)",
        )
    })?;
    if let Some(params) = load_params(path, storage).await? {
        for (key, ours, theirs) in [("k1", spec.k1, params.k1), ("b", spec.b, params.b)] {
            if (ours - theirs).abs() > 1e-12 {
                return Err(invalid(
                    &format!("embed.sparse.{key}"),
                    format!(
                        "{ours} differs from the {theirs} the parameters in {path} were fitted with; remove that file to fit again"
                    ),
                )
                .into());
            }
        }
        tracing::info!(
            "BM25 parameters read from {path} ({} texts fitted, {:.1} words on average)",
            params.n_docs,
            params.avgdl
        );
        return Ok(Arc::new(Bm25::new(params)));
    }
    let started = std::time::Instant::now();
    let mut fit = Bm25Fit::new(spec.k1, spec.b);
    let mut stream = texts.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        for text in crate::embed::udf::string_rows(batch.column(0))?
            .into_iter()
            .flatten()
        {
            fit.add(text);
        }
    }
    let params = fit.finish()?;
    save_params(path, storage, &params).await?;
    tracing::info!(
        "BM25 fitted on {} texts ({:.1} words on average, {} distinct) in {:.1} s; parameters written to {path}",
        params.n_docs,
        params.avgdl,
        params.doc_freq.indices.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Arc::new(Bm25::new(params)))
}
