//! Drives a pipeline: load the model, plan, check the source, open the sink, then stream batches
//! from the plan into the sink with progress, and report a summary.
//!
//! The DataFusion plan (scan, SQL, `embed()`) runs on a dedicated runtime, so CPU-bound inference
//! never blocks the I/O runtime that drives the sink. The two meet at a bounded channel: the plan
//! computes at most [`IN_FLIGHT_BATCHES`] batches ahead of what the sink has accepted.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, is_not_null};
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::config::Pipeline;
use crate::embed::{EmbedSpec, Embedder};
use crate::error::Interrupted;
use crate::plan::{self, checks};
use crate::report::{Progress, RunSummary};
use crate::signals::Shutdown;
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

/// Executes the whole job as one plan, `INSERT INTO sink SELECT ... FROM <the pipeline's
/// frame>` (the plan `explain` shows), on `rt`: the sink table forwards each batch through a
/// bounded channel to the driver, which holds the sink on the caller's I/O runtime.
pub(crate) fn spawn_insert(
    rt: &tokio::runtime::Runtime,
    plan: &plan::PipelinePlan,
    pipeline: &Pipeline,
) -> Result<mpsc::Receiver<datafusion::error::Result<RecordBatch>>> {
    let (tx, rx) = mpsc::channel(IN_FLIGHT_BATCHES);
    let schema = Arc::new(plan.frame.schema().as_arrow().clone());
    let table = crate::sink::table::SinkTable::forwarding(pipeline.clone(), schema, tx.clone());
    let insert = datafusion::logical_expr::LogicalPlanBuilder::insert_into(
        plan.frame.logical_plan().clone(),
        "sink",
        datafusion::datasource::provider_as_source(Arc::new(table)),
        datafusion::logical_expr::dml::InsertOp::Append,
    )?
    .build()?;
    let ctx = plan.ctx.clone();
    rt.spawn(async move {
        let done = async { ctx.execute_logical_plan(insert).await?.collect().await }.await;
        if let Err(e) = done {
            let _ = tx.send(Err(e)).await;
        }
    });
    Ok(rx)
}

/// Runs a pipeline end to end.
pub async fn run_pipeline(
    pipeline: &Pipeline,
    opts: &RunOptions,
    shutdown: &Shutdown,
) -> Result<RunSummary> {
    if let Some(spec) = &pipeline.incremental {
        return crate::incremental::run(pipeline, spec, opts, shutdown).await;
    }
    let start = Instant::now();
    // A pipeline that reads vectors (embed.vector) loads no model.
    let embedder = match pipeline.embed.vector {
        Some(_) => None,
        None => Some(shutdown.until(load_embedder(&pipeline.embed)).await?),
    };
    let model_seconds = start.elapsed().as_secs_f64();
    let (plan, sink) = shutdown
        .until(async {
            let plan = match &embedder {
                Some(e) => plan::build_sharded(pipeline, Arc::clone(e), opts.shard).await?,
                None => plan::build_vectors(pipeline, opts.shard).await?,
            };
            let schema = Arc::new(plan.frame.schema().as_arrow().clone());
            let sink = open_sink_for(pipeline, schema, opts.shard).await?;
            Ok((plan, sink))
        })
        .await?;
    // From here the sink holds its lock: every way out goes through abort.
    let checked = shutdown
        .until(async {
            let ids = checks::check_ids(&plan.ids, pipeline).await?;
            let total = if opts.progress {
                plan::source::known_source_rows(&plan, pipeline).await
            } else {
                None
            };
            Ok((ids, total))
        })
        .await;
    let (ids, total) = match checked {
        Ok(checked) => checked,
        Err(e) => {
            sink.abort().await;
            return Err(explain_scan_error(e, &plan, pipeline).await);
        }
    };
    let rt = cpu_runtime()?;
    let rx = spawn_insert(&rt, &plan, pipeline)?;
    let mut progress = Progress::new(total, opts.progress);
    let keeps_one_per_id = sink.keeps_one_row_per_id();
    let result = drive(
        rx,
        sink,
        embedder.as_deref(),
        &mut progress,
        shutdown.clone(),
    )
    .await;
    progress.finish();
    // Let the micro-batch being embedded finish (after a signal, `embed()` stops at the next
    // one), so ONNX Runtime is idle when the process exits.
    let _ = tokio::task::spawn_blocking(move || {
        rt.shutdown_timeout(crate::signals::plan_shutdown_wait())
    })
    .await;
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => return Err(explain_scan_error(e, &plan, pipeline).await),
    };
    if keeps_one_per_id {
        summary.rows_written = summary.rows_written.saturating_sub(ids.extra_rows);
    }
    summary.duplicate_rows = ids.extra_rows;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.model_seconds = model_seconds;
    summary.stream_seconds = progress.elapsed();
    if let Some(embedder) = &embedder {
        summary.tokens = embedder.tokens_seen();
        summary.rows_truncated = embedder.truncated_rows();
        say_truncated(&summary, embedder);
        let (tokenize, wait, infer) = embedder.timings().seconds();
        tracing::debug!(
            "embedding time, summed over threads: tokenising {tokenize:.2} s, waiting for the session {wait:.2} s, inference {infer:.2} s, over {:.2} s of streaming",
            summary.stream_seconds
        );
    }
    Ok(summary)
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

async fn drive(
    mut rx: mpsc::Receiver<datafusion::error::Result<RecordBatch>>,
    mut sink: Box<dyn Sink>,
    embedder: Option<&Embedder>,
    progress: &mut Progress,
    mut shutdown: Shutdown,
) -> Result<RunSummary> {
    let mut summary = RunSummary::default();
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            signal = shutdown.requested() => {
                let outcome = sink.abort_outcome().to_string();
                sink.abort().await;
                return Err(Interrupted { signal, outcome }.into());
            }
        };
        let Some(item) = item else { break };
        let step = match item {
            Ok(batch) => step(&mut sink, batch, &mut summary).await,
            Err(e) => Err(anyhow::Error::new(e)),
        };
        if let Err(e) = step {
            sink.abort().await;
            return Err(e);
        }
        progress.advance(
            summary.rows_read,
            embedder.map(Embedder::tokens_seen).unwrap_or(0),
        );
    }
    let report = sink.finish().await?;
    summary.record_sink(report);
    Ok(summary)
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

/// Hands one batch's embedded rows to the sink.
async fn step(
    sink: &mut Box<dyn Sink>,
    batch: RecordBatch,
    summary: &mut RunSummary,
) -> Result<()> {
    let rows = batch.num_rows() as u64;
    let (batch, skipped) = keep_embedded(&batch)?;
    summary.rows_read += rows;
    summary.rows_skipped += skipped;
    summary.rows_embedded += rows - skipped;
    if batch.num_rows() > 0 {
        sink.write(batch).await?;
    }
    Ok(())
}

/// Drops rows whose vector is null (null text) and returns how many were dropped.
pub(crate) fn keep_embedded(batch: &RecordBatch) -> Result<(RecordBatch, u64)> {
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
