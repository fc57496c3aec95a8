//! `validate`'s cost estimate: rows, tokens, vectors, bytes to write and the expected time, from
//! a count of the rows and a sample of the texts embedded here, before any real embedding.

use std::fmt;
use std::time::Instant;

use anyhow::Result;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::ident;

use super::PipelinePlan;
use crate::embed::Embedder;
use crate::embed::chunk::Chunker;
use crate::embed::spec::EmbedSpec;

/// Texts tokenised for the estimate.
const SAMPLE_ROWS: usize = 512;
/// Of those, texts embedded to measure this machine's speed.
const TIMED_ROWS: usize = 128;

#[derive(Debug, Clone, serde::Serialize)]
pub struct Estimate {
    pub rows: u64,
    pub sampled: usize,
    pub tokens: u64,
    pub vectors: u64,
    /// Bytes of vectors (and ids) to write: Parquet floats, or Pinecone's JSON.
    pub bytes: u64,
    pub tokens_per_second: f64,
    pub seconds: f64,
    pub pinecone: bool,
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

impl fmt::Display for Estimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "estimate (from {} sampled texts): {} rows, about {} tokens, {} vectors, about {} {}; at {:.0} tokens/s (measured here on the sample): about {:.0} s of embedding",
            self.sampled,
            self.rows,
            self.tokens,
            self.vectors,
            mb(self.bytes),
            if self.pinecone {
                "of JSON to upload, plus metadata"
            } else {
                "of vectors to write, plus metadata"
            },
            self.tokens_per_second,
            self.seconds
        )
    }
}

/// Counts the rows and embeds a sample to estimate the whole run (`to_pinecone`: the size of the
/// upserts the vectors become, else of a Parquet output).
pub async fn estimate(
    plan: &PipelinePlan,
    spec: &EmbedSpec,
    to_pinecone: bool,
    embedder: &Embedder,
) -> Result<Estimate> {
    let rows = plan.ids.clone().count().await? as u64;
    let text = &spec.text;
    let batches = plan
        .source
        .clone()
        .select(vec![ident(text.as_str())])?
        .limit(0, Some(SAMPLE_ROWS))?
        .collect()
        .await?;
    let mut texts = Vec::new();
    for b in &batches {
        let a = cast(b.column(0), &DataType::Utf8)?;
        let a = a.as_string::<i32>();
        texts.extend(
            (0..a.len())
                .filter(|&i| a.is_valid(i))
                .map(|i| a.value(i).to_string()),
        );
    }
    let chunker = match &spec.chunking {
        Some(spec) => Some(Chunker::new(
            spec,
            embedder.tokenizer(),
            embedder.max_seq_length(),
        )?),
        None => None,
    };
    // What the model sees: each text, or each chunk.
    let pieces: Vec<String> = match &chunker {
        Some(c) => texts
            .iter()
            .flat_map(|t| c.chunks(t).into_iter().map(str::to_string))
            .collect(),
        None => texts.clone(),
    };
    let limit = embedder.max_seq_length();
    let mut sample_tokens = 0u64;
    for p in &pieces {
        sample_tokens += embedder.tokens(p)?.ids.len().min(limit) as u64;
    }
    let timed: Vec<Option<&str>> = pieces
        .iter()
        .take(TIMED_ROWS)
        .map(|p| Some(p.as_str()))
        .collect();
    let timed_tokens: u64 = pieces
        .iter()
        .take(TIMED_ROWS)
        .map(|p| embedder.tokens(p).map(|t| t.ids.len().min(limit) as u64))
        .sum::<Result<u64>>()?;
    let start = Instant::now();
    let vectors = embedder.embed(&timed)?;
    let tokens_per_second = timed_tokens as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let dim = embedder.dim().max(1);
    let per_vector = if to_pinecone {
        // The JSON of the sampled vectors as they would be sent, plus the id and envelope.
        let sent: usize = vectors
            .chunks(dim)
            .map(|v| serde_json::to_vec(v).map(|j| j.len()).unwrap_or(dim * 11))
            .sum();
        sent as f64 / timed.len().max(1) as f64 + 40.0
    } else {
        (dim * 4) as f64 + 16.0
    };
    let n = texts.len().max(1) as f64;
    let tokens = (sample_tokens as f64 / n * rows as f64).round() as u64;
    let vectors = (pieces.len() as f64 / n * rows as f64).round() as u64;
    Ok(Estimate {
        rows,
        sampled: texts.len(),
        tokens,
        vectors,
        bytes: (per_vector * vectors as f64) as u64,
        tokens_per_second,
        seconds: tokens as f64 / tokens_per_second.max(1e-9),
        pinecone: to_pinecone,
    })
}
