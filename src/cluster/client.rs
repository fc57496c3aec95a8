//! `embedflow run --cluster df://HOST:PORT`: the pipeline planned here, run on a Ballista cluster.
//!
//! The client loads the model (to check it and learn the vector width), builds the same plan a
//! local run builds, with the source rows spread over partitions by a hash of their id, puts
//! [`PartitionedSinkExec`] on top and submits the physical plan to the scheduler. Ballista cuts it
//! into stages at the shuffle: executors scan and hash the source, then embed and write their
//! partitions. Each partition reports one row, and the client adds them up into the usual
//! summary; a Parquet output is published only when the whole job succeeded ([`Staging`]).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use datafusion::arrow::array::RecordBatch;
use futures::future::BoxFuture;

use super::jobs::{connect, job_plan, physical_plan_for_cluster, spread};
use super::publish::Staging;
use super::scheduler_api::SchedulerApi;
use crate::config::Pipeline;
use crate::driver::{RunOptions, check_destination, load_embedder, say_truncated};
use crate::error::{Interrupted, config_error};
use crate::plan::{self, checks};
use crate::report::RunSummary;
use crate::signals::Shutdown;
use crate::sink::SinkKind;
use crate::sink::partitioned::{PartTarget, add_partition_rows};

/// Partitions of a cluster job when `--partitions` is not given: enough for two executors with
/// a few task slots each to share the work, and for a lost task to cost little.
pub const DEFAULT_PARTITIONS: usize = 8;

/// `df://host:port` (or `host:port`), given by the command-line flag `flag`, as the scheduler's
/// gRPC URL.
pub fn scheduler_url(flag: &str, cluster: &str) -> Result<String> {
    let address = cluster
        .strip_prefix("df://")
        .unwrap_or(cluster)
        .trim_end_matches('/');
    let (host, port) = address.rsplit_once(':').ok_or_else(|| {
        config_error(format!(
            "{flag} {cluster}: give the scheduler as df://HOST:PORT (e.g. df://127.0.0.1:50050)"
        ))
    })?;
    let port: u16 = port.parse().map_err(|_| {
        config_error(format!(
            "{flag} {cluster}: `{port}` is not a port (df://HOST:PORT)"
        ))
    })?;
    if host.is_empty() {
        return Err(config_error(format!(
            "{flag} {cluster}: no host (df://HOST:PORT)"
        )));
    }
    Ok(format!("http://{host}:{port}"))
}

/// Runs `pipeline` on the cluster whose scheduler is at `cluster`.
pub async fn run_on_cluster(
    pipeline: &Pipeline,
    cluster: &str,
    partitions: Option<usize>,
    wait_for_executors: std::time::Duration,
    opts: &RunOptions,
    shutdown: &Shutdown,
) -> Result<RunSummary> {
    let url = scheduler_url("--cluster", cluster)?;
    let api = SchedulerApi::new(&url);
    if opts.shard.is_some() {
        return Err(config_error(
            "--shard and --cluster are two ways to split a job: use one",
        ));
    }
    let partitions = partitions.unwrap_or(DEFAULT_PARTITIONS).max(1);
    if let Some(spec) = &pipeline.incremental {
        // The state is read, locked and published by this client; its checkpoints are written
        // by the tasks, so it must be where every executor can write.
        let (jobs, api) = shutdown
            .until(connect(pipeline, &url, cluster, wait_for_executors))
            .await?;
        let mut phases = super::phases::ClusterPhases::new(jobs, api, partitions);
        return crate::incremental::run_on(pipeline, spec, opts, shutdown, &mut phases).await;
    }
    let start = Instant::now();
    // A pipeline that reads vectors (embed.vector) loads no model.
    let embedder = match pipeline.embed.vector {
        Some(_) => None,
        None => Some(shutdown.until(load_embedder(&pipeline.embed)).await?),
    };
    let model_seconds = start.elapsed().as_secs_f64();
    check_destination(pipeline)?;
    let plan = match &embedder {
        Some(e) => plan::build(pipeline, Arc::clone(e)).await?,
        None => plan::build_vectors(pipeline, None).await?,
    };
    let dim = vector_width(&plan.frame)?;
    let (jobs, _) = shutdown
        .until(connect(pipeline, &url, cluster, wait_for_executors))
        .await?;
    let job_name = jobs.name().to_string();
    // The id checks are aggregates over the source: jobs on the cluster too.
    let on_cluster =
        |frame: datafusion::prelude::DataFrame| -> BoxFuture<'static, Result<Vec<RecordBatch>>> {
            let jobs = jobs.clone();
            Box::pin(async move { jobs.collect(physical_plan_for_cluster(&frame).await?).await })
        };
    let ids = match shutdown
        .until(checks::check_ids_on(&plan.ids, pipeline, &on_cluster))
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            api.cancel_jobs_named(&job_name).await;
            return Err(e);
        }
    };
    let staging = match pipeline.sink.kind()? {
        SinkKind::Parquet(spec) => Some(Staging::prepare(spec, &pipeline.storage).await?),
        SinkKind::Pinecone(spec) => {
            // The same preflight a local run makes, before any executor starts.
            shutdown
                .until(crate::sink::pinecone::connect(spec, dim))
                .await?;
            None
        }
    };
    let mut target = PartTarget::new(
        &pipeline.sink,
        &pipeline.storage,
        staging.as_ref().map(|s| s.parts.clone()),
    );
    if let Some(p) = target.sink.pinecone.as_mut()
        && p.dead_letter.is_none()
    {
        p.dead_letter = Some(crate::sink::pinecone::default_dead_letter(&p.index));
    }
    let job = async {
        let frame_plan = physical_plan_for_cluster(&plan.frame).await?;
        let root = job_plan(spread(frame_plan, partitions)?, target);
        tracing::info!(
            "submitting the job to {url}: {partitions} partitions, {}",
            root.name()
        );
        jobs.collect(root).await
    };
    let mut signals = shutdown.clone();
    let batches = tokio::select! {
        batches = job => batches,
        signal = signals.requested() => {
            let outcome = match &staging {
                Some(_) => "nothing was published; the previous output is as it was",
                None => "vectors upserted before the signal stay in the index; a re-run overwrites them",
            };
            api.cancel_jobs_named(&job_name).await;
            if let Some(staging) = staging {
                staging.discard().await;
            }
            return Err(Interrupted { signal, outcome: outcome.to_string() }.into());
        }
    };
    let batches = match batches {
        Ok(b) => b,
        Err(e) => {
            api.cancel_jobs_named(&job_name).await;
            if let Some(staging) = staging {
                staging.discard().await;
            }
            return Err(e);
        }
    };
    let mut summary = RunSummary::default();
    let reported = add_partition_rows(&mut summary, &batches)?;
    tracing::debug!("{reported} partition reports for {partitions} partitions");
    match (staging, pipeline.sink.kind()?) {
        (Some(staging), SinkKind::Parquet(spec)) => {
            let parts = staging.publish().await?;
            summary.output = format!("{} ({parts} parts)", spec.path.trim_end_matches('/'));
        }
        (_, SinkKind::Pinecone(spec)) => {
            summary.output = format!("pinecone index {}", spec.index);
            // An index keeps one vector per id.
            summary.rows_written = summary.rows_written.saturating_sub(ids.extra_rows);
        }
        _ => {}
    }
    summary.duplicate_rows = ids.extra_rows;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.model_seconds = model_seconds;
    summary.stream_seconds = summary.seconds - model_seconds;
    if let Some(embedder) = &embedder {
        say_truncated(&summary, embedder);
    }
    Ok(summary)
}

/// The width of the plan's `vector` column.
fn vector_width(frame: &datafusion::prelude::DataFrame) -> Result<usize> {
    match frame
        .schema()
        .field_with_unqualified_name("vector")
        .map(|f| f.data_type().clone())
    {
        Ok(datafusion::arrow::datatypes::DataType::FixedSizeList(_, n)) => Ok(n as usize),
        _ => Err(anyhow!("the plan has no vector column of fixed width")),
    }
}
