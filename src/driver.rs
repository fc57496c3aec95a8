//! The driver's parts that every way of running a pipeline shares (a local run, an incremental
//! run, a cluster job's client): loading the model off the async runtime, the destination's
//! checks and opening the sink, the plan's own CPU runtime and its bounded stream, and the
//! messages that explain a scan error or truncated texts.
//!
//! The DataFusion plan (scan, SQL, `embed()`) runs on a dedicated runtime, so CPU-bound inference
//! never blocks the I/O runtime that drives the sink. The two meet at a bounded channel: the plan
//! computes at most [`IN_FLIGHT_BATCHES`] batches ahead of what the sink has accepted.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::config::Pipeline;
use crate::embed::{EmbedSpec, Embedder};
use crate::plan::{self, checks};
use crate::report::RunSummary;
use crate::sink::parquet::ParquetSink;
use crate::sink::parquet::overlap::refuse_output_over_sources;
use crate::sink::pinecone::PineconeSink;
use crate::sink::{Sink, SinkKind};

/// Batches computed ahead of the sink.
pub const IN_FLIGHT_BATCHES: usize = 2;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar (on a terminal) or progress log lines.
    pub progress: bool,
    /// Incremental pipelines: ignore the state, embed every row and write the state again.
    pub full: bool,
    /// Process only the rows of this shard.
    pub shard: Option<crate::plan::shard::Shard>,
}

/// Loads a model off the async runtime.
pub async fn load_embedder(spec: &EmbedSpec) -> Result<Arc<Embedder>> {
    let spec = spec.clone();
    let embedder = tokio::task::spawn_blocking(move || Embedder::load(&spec))
        .await
        .map_err(|e| anyhow!("model loading panicked: {e}"))??;
    tracing::info!(
        "model {} loaded from {} ({} dimensions, max {} tokens)",
        embedder.model_name(),
        embedder.model_files().dir.display(),
        embedder.dim(),
        embedder.max_seq_length()
    );
    Ok(Arc::new(embedder))
}

/// Checks the destination before anything runs: an output that would overwrite a source is
/// refused.
pub fn check_destination(pipeline: &Pipeline) -> Result<()> {
    if let SinkKind::Parquet(spec) = pipeline.sink.kind()? {
        refuse_output_over_sources(spec, &pipeline.source)?;
    }
    Ok(())
}

/// Opens the pipeline's sink for the plan's output schema (its preflight runs here).
pub async fn open_sink(pipeline: &Pipeline, frame: &DataFrame) -> Result<Box<dyn Sink>> {
    open_sink_for(pipeline, Arc::new(frame.schema().as_arrow().clone()), None).await
}

/// Opens the pipeline's sink for batches of `schema`.
pub async fn open_sink_for(
    pipeline: &Pipeline,
    schema: datafusion::arrow::datatypes::SchemaRef,
    shard: Option<crate::plan::shard::Shard>,
) -> Result<Box<dyn Sink>> {
    check_destination(pipeline)?;
    Ok(match pipeline.sink.kind()? {
        SinkKind::Parquet(spec) => {
            Box::new(ParquetSink::create(spec, &pipeline.storage, schema, shard).await?)
        }
        SinkKind::Pinecone(spec) => Box::new(PineconeSink::open(spec, &schema).await?),
    })
}

/// A runtime for the plan's CPU work, separate from the caller's I/O runtime.
pub(crate) fn cpu_runtime() -> Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("embedflow-plan")
        .enable_all()
        .build()
        .context("cannot start the plan runtime")
}

/// Executes `frame` on `rt`, sending batches through a bounded channel.
pub(crate) fn spawn_plan(
    rt: &tokio::runtime::Runtime,
    frame: DataFrame,
) -> mpsc::Receiver<datafusion::error::Result<RecordBatch>> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT_BATCHES);
    rt.spawn(async move {
        let mut stream = match frame.execute_stream().await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        while let Some(item) = stream.next().await {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// Says once how many texts were cut at `max_seq_length`, and how to embed them whole.
pub(crate) fn say_truncated(summary: &RunSummary, embedder: &Embedder) {
    if summary.rows_truncated > 0 {
        let most = embedder
            .max_positions()
            .map(|m| format!(" (this model takes up to {m})"))
            .unwrap_or_default();
        tracing::warn!(
            "{} of {} texts were longer than max_seq_length, {} word pieces: only their beginning was embedded, as sentence-transformers does; to embed all of each text, set embed.chunking (e.g. chunking: {{ overlap: 32 }}), or raise embed.max_seq_length{most}",
            summary.rows_truncated,
            summary.rows_embedded,
            embedder.max_seq_length()
        );
    }
}

/// Names the table and column of a scan that failed decoding Parquet (the error itself does
/// not); other errors pass through.
pub(crate) async fn explain_scan_error(
    err: anyhow::Error,
    plan: &plan::PipelinePlan,
    pipeline: &Pipeline,
) -> anyhow::Error {
    let decoding = err.chain().any(|e| {
        crate::storage::errors::classify(e) == crate::storage::errors::StoreProblem::NotParquet
    });
    if !decoding {
        return err;
    }
    match checks::locate_parquet_error(&plan.ctx, pipeline).await {
        Some((table, column)) => anyhow!(
            "table `{table}`, column `{column}`: {} (a text column must hold UTF-8; cast it in source.sql, or fix the file)",
            crate::error::describe(&err)
        ),
        None => err,
    }
}
