//! Where vectors go. One trait, one implementation per destination.
//!
//! The driver ([`crate::run`]) hands a sink only rows that have a vector; it pulls the next batch
//! from the plan only after `write` returns, so a slow sink slows the scan instead of filling
//! memory.

pub mod parquet;
pub mod pinecone;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;

/// What a finished sink reports for the run summary.
#[derive(Debug, Clone, Default)]
pub struct SinkReport {
    pub rows_written: u64,
    /// Where the output landed, for the summary line.
    pub location: String,
    /// Rows that could not be written and went to the dead-letter file.
    pub rows_failed: u64,
    pub dead_letter: Option<String>,
    /// HTTP requests made and retried (network sinks).
    pub requests: Option<u64>,
    pub retries: Option<u64>,
}

#[async_trait]
pub trait Sink: Send {
    /// Writes one batch of `id`, `vector` and metadata columns.
    async fn write(&mut self, batch: RecordBatch) -> anyhow::Result<()>;
    /// Publishes the output; before this returns nothing looks complete.
    async fn finish(self: Box<Self>) -> anyhow::Result<SinkReport>;
    /// Discards everything written so far.
    async fn abort(self: Box<Self>);
}
