//! `run`: a pipeline end to end on this machine. An incremental pipeline goes to
//! [`crate::incremental`]; any other is executed as one plan, `INSERT INTO sink SELECT ... FROM
//! <the pipeline's frame>`, streamed into the sink with progress, then summarised. The parts
//! every driver shares are in [`crate::driver`].

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use datafusion::arrow::array::RecordBatch;
use tokio::sync::mpsc;

use crate::config::Pipeline;
pub use crate::driver::RunOptions;
use crate::driver::{
    IN_FLIGHT_BATCHES, cpu_runtime, explain_scan_error, load_embedder, open_sink_for, say_truncated,
};
use crate::embed::Embedder;
use crate::error::Interrupted;
use crate::plan::{self, checks};
use crate::report::{Progress, RunSummary};
use crate::signals::Shutdown;
use crate::sink::{Sink, keep_embedded};

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
                plan::source::known_source_rows(&plan.ctx, &pipeline.source).await
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
