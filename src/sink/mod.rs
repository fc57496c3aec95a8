//! Where vectors go. One trait, one implementation per destination.
//!
//! The driver ([`crate::driver`]) hands a sink only rows that have a vector; it pulls the next batch
//! from the plan only after `write` returns, so a slow sink slows the scan instead of filling
//! memory.

pub mod parquet;
pub mod part_name;
pub mod pinecone;

use anyhow::Context;
use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, is_not_null};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};
use parquet::config::ParquetSinkSpec;
use pinecone::config::PineconeSinkSpec;

/// `sink:` in the pipeline: exactly one of the keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinecone: Option<PineconeSinkSpec>,
}

/// The configured sink, once validated to be exactly one.
#[derive(Debug, Clone, Copy)]
pub enum SinkKind<'a> {
    Parquet(&'a ParquetSinkSpec),
    Pinecone(&'a PineconeSinkSpec),
}

impl SinkSpec {
    /// The one sink the pipeline names.
    pub fn kind(&self) -> Result<SinkKind<'_>, ConfigError> {
        match (&self.parquet, &self.pinecone) {
            (Some(p), None) => Ok(SinkKind::Parquet(p)),
            (None, Some(p)) => Ok(SinkKind::Pinecone(p)),
            (Some(_), Some(_)) => Err(invalid(
                "sink",
                "name one sink, not both parquet and pinecone (run the pipeline twice, once with --set for each)",
            )),
            (None, None) => Err(invalid(
                "sink",
                "name one sink, e.g. sink: { parquet: { path: out/vectors } } or sink: { pinecone: { index: docs } }",
            )),
        }
    }

    /// The longest id, in bytes, that the destination takes (Pinecone's 512), so that the id
    /// check before embedding can refuse longer ones; `None` when any length will do.
    pub fn max_id_bytes(&self) -> Option<usize> {
        match self.kind() {
            Ok(SinkKind::Pinecone(_)) => Some(pinecone::config::limits::MAX_ID_BYTES),
            _ => None,
        }
    }

    /// The Parquet sink's settings (an error when the pipeline writes elsewhere).
    pub fn parquet(&self) -> Result<&ParquetSinkSpec, ConfigError> {
        match self.kind()? {
            SinkKind::Parquet(p) => Ok(p),
            SinkKind::Pinecone(_) => Err(ConfigError::new(
                "this command needs a Parquet sink, but the pipeline writes to Pinecone",
            )),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.kind()? {
            SinkKind::Parquet(p) => p.validate(),
            SinkKind::Pinecone(p) => p.validate(),
        }
    }
}

/// What a finished sink reports for the run summary (defined with the summary it feeds).
pub use crate::report::SinkReport;

#[async_trait]
pub trait Sink: Send {
    /// Writes one batch of `id`, `vector` and metadata columns.
    async fn write(&mut self, batch: RecordBatch) -> anyhow::Result<()>;
    /// True when rows sharing an id end up as one (an index); false when each row is kept.
    fn keeps_one_row_per_id(&self) -> bool {
        false
    }
    /// True when rows are confirmed request by request (an index); false when the whole output
    /// is held only once published (a file).
    fn confirms_as_it_goes(&self) -> bool {
        false
    }
    /// Starts keeping the ids of confirmed vectors for [`Sink::take_confirmed`].
    fn track_confirmations(&mut self) {}
    /// Vector ids confirmed since the last call.
    fn take_confirmed(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Deletes vectors by id, waiting until the sink confirms it. A file output is rebuilt
    /// whole instead, so this is for sinks that keep what earlier runs wrote.
    async fn delete(&mut self, _ids: Vec<String>) -> anyhow::Result<()> {
        Ok(())
    }
    /// Replaces the metadata of existing vectors, without their values: a batch of `id` and
    /// metadata columns. For sinks that keep what earlier runs wrote.
    async fn update_metadata(&mut self, _batch: RecordBatch) -> anyhow::Result<()> {
        anyhow::bail!("this sink cannot update metadata in place")
    }
    /// Sends what is buffered and waits for every request in flight.
    async fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Publishes the output; before this returns nothing looks complete.
    async fn finish(self: Box<Self>) -> anyhow::Result<SinkReport>;
    /// Stops writing: a file output is discarded, an index keeps what it already holds.
    async fn abort(self: Box<Self>);
    /// What [`Sink::abort`] leaves behind, for the message that ends an interrupted run.
    fn abort_outcome(&self) -> &'static str;
}

/// Drops rows whose vector is null (null text) and returns how many were dropped.
pub fn keep_embedded(batch: &RecordBatch) -> anyhow::Result<(RecordBatch, u64)> {
    let vectors = batch
        .column_by_name("vector")
        .context("plan output has no vector column")?;
    let nulls = vectors.null_count() as u64;
    if nulls == 0 {
        return Ok((batch.clone(), 0));
    }
    let keep = is_not_null(vectors.as_ref())?;
    Ok((filter_record_batch(batch, &keep)?, nulls))
}
