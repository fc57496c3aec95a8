//! The one job driver: every run of a pipeline (local, `--shard`, incremental, `--cluster`) is
//! [`run`] on an [`executor::Executor`]. It loads the model, builds the plan (`embed()` over the
//! source, filtered by shard), checks the ids with a query on the executor, lets an incremental
//! run classify the source against its state ([`incremental::prepare`]), then hands the
//! executor the job's phases, each a plan whose rows go through a [`writer::Writer`] into the
//! sink, and adds up the summary. Where the plans run is the executor's business:
//! [`executor::Local`] here, `crate::cluster::phases::ClusterPhases` on a Ballista cluster.
//!
//! The DataFusion plan (scan, SQL, `embed()`) runs on a dedicated runtime, so CPU-bound inference
//! never blocks the I/O runtime that drives the sink. The two meet at a bounded channel: the plan
//! computes at most [`IN_FLIGHT_BATCHES`] batches ahead of what the sink has accepted.

pub mod executor;
pub mod incremental;
pub mod partitioned;
pub mod table;
pub mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::DataFrame;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::config::Pipeline;
use crate::embed::{EmbedSpec, Embedder};
use crate::error::config_error;
use crate::incremental::state::CheckpointTarget;
use crate::plan::{self, checks};
use crate::report::RunSummary;
use crate::signals::Shutdown;
use crate::sink::parquet::ParquetSink;
use crate::sink::parquet::overlap::refuse_output_over_sources;
use crate::sink::pinecone::PineconeSink;
use crate::sink::{Sink, SinkKind, SinkReport};

/// Batches computed ahead of the sink.
pub const IN_FLIGHT_BATCHES: usize = 2;

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress bar (on a terminal) or progress log lines.
    pub progress: bool,
    /// Incremental pipelines: ignore the state, embed every row and write the state again.
    pub full: bool,
    /// Process only the rows of this shard.
    pub shard: Option<crate::shard::Shard>,
}

/// What an executor runs: the phases in order, each a plan whose rows go through the writers.
pub struct Job {
    pub phases: Vec<(writer::Phase, DataFrame)>,
    /// The sink's schema (the rows without hidden columns).
    pub output: datafusion::arrow::datatypes::SchemaRef,
    /// An incremental run's checkpoints.
    pub checkpoints: Option<CheckpointTarget>,
    pub checkpoint_every: Duration,
    /// Rows to embed, for the progress bar (when known).
    pub to_embed: Option<u64>,
}

impl Job {
    /// A run without state: every row of the plan, embedded and written.
    fn whole(frame: &DataFrame, rows: Option<u64>) -> Job {
        Job {
            phases: vec![(writer::Phase::Embed, frame.clone())],
            output: Arc::new(frame.schema().as_arrow().clone()),
            checkpoints: None,
            checkpoint_every: Duration::from_secs(1),
            to_embed: rows,
        }
    }
}

/// Runs a pipeline end to end on this machine.
pub async fn run_locally(
    pipeline: &Pipeline,
    opts: &RunOptions,
    shutdown: &Shutdown,
) -> Result<RunSummary> {
    let mut here = executor::Local::new(opts.progress);
    run(pipeline, opts, shutdown, &mut here).await
}

/// Runs a pipeline end to end, its plans and writers on `executor`.
pub async fn run(
    pipeline: &Pipeline,
    opts: &RunOptions,
    shutdown: &Shutdown,
    executor: &mut dyn executor::Executor,
) -> Result<RunSummary> {
    let start = Instant::now();
    // An incremental pipeline's bulk import is its backfill: later runs upsert.
    let upserting = shutdown
        .until(incremental::import_or_upsert(pipeline, opts))
        .await?;
    let pipeline = upserting.as_ref().unwrap_or(pipeline);
    if let Some(report) = shutdown.until(resume_import(pipeline, opts)).await? {
        let mut summary = RunSummary {
            seconds: start.elapsed().as_secs_f64(),
            ..RunSummary::default()
        };
        summary.record_sink(report);
        return Ok(summary);
    }
    // A pipeline that reads vectors (embed.vector) loads no model.
    let embedder = match pipeline.embed.vector {
        Some(_) => None,
        None => Some(shutdown.until(load_embedder(&pipeline.embed)).await?),
    };
    let model_seconds = start.elapsed().as_secs_f64();
    check_destination(pipeline)?;
    let mut plan = shutdown
        .until(async {
            match &embedder {
                Some(e) => {
                    plan::build_sharded(pipeline.plan_spec(), Arc::clone(e), opts.shard).await
                }
                None => plan::build_vectors(pipeline.plan_spec(), opts.shard).await,
            }
        })
        .await?;
    let (ids, mut summary) = match &pipeline.incremental {
        None => {
            let ids = checked_ids(pipeline, opts, shutdown, executor, &plan).await?;
            let job = Job::whole(&plan.frame, ids.rows);
            let summary = execute(
                pipeline,
                opts,
                shutdown,
                executor,
                &plan,
                embedder.as_ref(),
                job,
            )
            .await?;
            (ids, summary)
        }
        Some(spec) => {
            let collect = executor.collector();
            let staged = executor.stages_checkpoints();
            // Before the id checks: a change feed narrows the rows they check.
            let prepared = incremental::prepare(
                pipeline,
                spec,
                opts,
                shutdown,
                &mut plan,
                embedder.as_ref(),
                &collect,
                staged,
            )
            .await;
            let (mut incremental, job) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    let e = executor.abort(e).await;
                    return Err(explain_scan_error(e, &plan, pipeline).await);
                }
            };
            let ids = match checked_ids(pipeline, opts, shutdown, executor, &plan).await {
                Ok(ids) => ids,
                Err(e) => {
                    incremental.release().await;
                    return Err(e);
                }
            };
            let done = match execute(
                pipeline,
                opts,
                shutdown,
                executor,
                &plan,
                embedder.as_ref(),
                job,
            )
            .await
            {
                Ok(mut summary) => incremental.complete(&plan.ctx).await.map(|counts| {
                    summary.incremental = Some(counts);
                    summary
                }),
                Err(e) => Err(e),
            };
            incremental.release().await;
            (ids, done?)
        }
    };
    if matches!(pipeline.sink.kind()?, SinkKind::Pinecone(_)) {
        // An index keeps one vector per id.
        summary.rows_written = summary.rows_written.saturating_sub(ids.extra_rows);
    }
    summary.duplicate_rows = ids.extra_rows;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.model_seconds = model_seconds;
    summary.spill_files = plan::memory::spill_files();
    if summary.stream_seconds == 0.0 {
        summary.stream_seconds = summary.seconds - model_seconds;
    }
    if let Some(embedder) = &embedder {
        // Embedded on this machine: the model's own counts (a cluster's tasks report theirs).
        summary.tokens = summary.tokens.max(embedder.tokens_seen());
        summary.rows_truncated = summary.rows_truncated.max(embedder.truncated_rows());
        say_truncated(&summary, embedder);
        let (tokenize, wait, infer) = embedder.timings().seconds();
        tracing::debug!(
            "embedding time, summed over threads: tokenising {tokenize:.2} s, waiting for the session {wait:.2} s, inference {infer:.2} s, over {:.2} s of streaming",
            summary.stream_seconds
        );
    }
    Ok(summary)
}

/// [`check_ids`], a failure aborting the executor's work and naming the column a scan failed on.
async fn checked_ids(
    pipeline: &Pipeline,
    opts: &RunOptions,
    shutdown: &Shutdown,
    executor: &mut dyn executor::Executor,
    plan: &plan::PipelinePlan,
) -> Result<CheckedIds> {
    match check_ids(pipeline, opts, shutdown, executor, plan).await {
        Ok(ids) => Ok(ids),
        Err(e) => {
            let e = executor.abort(e).await;
            Err(explain_scan_error(e, plan, pipeline).await)
        }
    }
}

/// The id checks, as a query on the executor; and the source's row count for a progress bar,
/// when its files say it.
struct CheckedIds {
    extra_rows: u64,
    rows: Option<u64>,
}

async fn check_ids(
    pipeline: &Pipeline,
    opts: &RunOptions,
    shutdown: &Shutdown,
    executor: &dyn executor::Executor,
    plan: &plan::PipelinePlan,
) -> Result<CheckedIds> {
    let collect = executor.collector();
    shutdown
        .until(async {
            let ids = checks::check_ids_on(
                &plan.ids,
                &pipeline.embed,
                pipeline.sink.max_id_bytes(),
                &*collect,
            )
            .await?;
            let rows = if opts.progress && pipeline.incremental.is_none() {
                plan::source::known_source_rows(&plan.ctx, &pipeline.source).await
            } else {
                None
            };
            Ok(CheckedIds {
                extra_rows: ids.extra_rows,
                rows,
            })
        })
        .await
}

/// Opens the destination on the executor and runs the job's phases through it; publishes the
/// output when every phase succeeded, and otherwise stops the executor, which says what the run
/// leaves behind.
async fn execute(
    pipeline: &Pipeline,
    opts: &RunOptions,
    shutdown: &Shutdown,
    executor: &mut dyn executor::Executor,
    plan: &plan::PipelinePlan,
    embedder: Option<&Arc<Embedder>>,
    job: Job,
) -> Result<RunSummary> {
    let opening = executor::Opening {
        pipeline,
        output: job.output,
        checkpoints: job.checkpoints,
        checkpoint_every: job.checkpoint_every,
        embedder,
        dim: vector_width(&plan.frame)?,
        to_embed: job.to_embed,
        shard: opts.shard,
    };
    let mut result = shutdown.until(executor.open(opening)).await;
    // From here the sink holds its lock: every way out goes through abort.
    if result.is_ok() {
        for (phase, frame) in job.phases {
            result = executor.phase(frame, phase, shutdown).await;
            if result.is_err() {
                break;
            }
        }
    }
    match result {
        Ok(()) => executor.finish().await,
        Err(e) => {
            let e = executor.abort(e).await;
            Err(explain_scan_error(e, plan, pipeline).await)
        }
    }
}

/// The width of the plan's `vector` column.
fn vector_width(frame: &DataFrame) -> Result<usize> {
    match frame
        .schema()
        .field_with_unqualified_name("vector")
        .map(|f| f.data_type().clone())
    {
        Ok(datafusion::arrow::datatypes::DataType::FixedSizeList(_, n)) => Ok(n as usize),
        _ => Err(anyhow!("the plan has no vector column of fixed width")),
    }
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
/// A bulk import an earlier run started: followed to its end instead of embedding again
/// (`Some`: the run's sink report). Refuses the runs an import cannot serve yet.
async fn resume_import(pipeline: &Pipeline, opts: &RunOptions) -> Result<Option<SinkReport>> {
    let SinkKind::Pinecone(spec) = pipeline.sink.kind()? else {
        return Ok(None);
    };
    if spec.import.is_none() {
        return Ok(None);
    }
    if let Some(shard) = opts.shard {
        return Err(config_error(format!(
            "--shard {shard} with sink.pinecone.import: each shard would start its own import of one namespace, and Pinecone imports only into a new namespace; run the import unsharded"
        )));
    }
    let report = crate::sink::pinecone::import::resume(spec, &pipeline.storage).await?;
    if report.is_some()
        && let Some(inc) = &pipeline.incremental
    {
        // The import the killed run started has completed: what that run embedded joins the
        // state, as if upserted.
        incremental::adopt_imported(pipeline, inc).await?;
    }
    Ok(report)
}

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
    shard: Option<crate::shard::Shard>,
) -> Result<Box<dyn Sink>> {
    check_destination(pipeline)?;
    Ok(match pipeline.sink.kind()? {
        SinkKind::Parquet(spec) if spec.is_delta() => {
            if let Some(shard) = shard {
                return Err(config_error(format!(
                    "--shard {shard} with sink.parquet.format: delta: each shard would commit its own version of one table (an overwrite would replace the other shards' rows); run unsharded, or on a cluster"
                )));
            }
            Box::new(
                crate::sink::parquet::delta::DeltaSink::open(spec, &pipeline.storage, schema)
                    .await?,
            )
        }
        SinkKind::Parquet(spec) => {
            Box::new(ParquetSink::create(spec, &pipeline.storage, schema, shard).await?)
        }
        SinkKind::Pinecone(spec) if spec.import.is_some() => Box::new(
            crate::sink::pinecone::import::ImportSink::open(spec, &pipeline.storage, &schema)
                .await?,
        ),
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
    match checks::locate_parquet_error(&plan.ctx, &pipeline.source).await {
        Some((table, column)) => anyhow!(
            "table `{table}`, column `{column}`: {} (a text column must hold UTF-8; cast it in source.sql, or fix the file)",
            crate::error::describe(&err)
        ),
        None => err,
    }
}
