//! `embedflow run --cluster df://HOST:PORT`: the pipeline planned here, run on a Ballista cluster.
//!
//! The client connects to the scheduler and runs the one driver ([`crate::driver::run`]) with
//! the cluster as its executor ([`ClusterPhases`]): the same plan a local run builds, with the
//! source rows spread over partitions below `embed()` and `PartitionedSinkExec` on top, is
//! submitted to the scheduler. Ballista cuts it into stages at the shuffle: executors scan and
//! hash the source, then embed and write their partitions. Each partition reports one row, and
//! the client adds them up into the usual summary; a Parquet output is published only when the
//! whole job succeeded.

use anyhow::Result;

use super::jobs::connect;
use super::phases::ClusterPhases;
use crate::config::Pipeline;
use crate::driver::RunOptions;
use crate::error::config_error;
use crate::report::RunSummary;
use crate::signals::Shutdown;

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

/// Runs `pipeline` on the cluster whose scheduler is at `cluster`, through the one driver.
pub async fn run_on_cluster(
    pipeline: &Pipeline,
    cluster: &str,
    partitions: Option<usize>,
    wait_for_executors: std::time::Duration,
    opts: &RunOptions,
    shutdown: &Shutdown,
) -> Result<RunSummary> {
    let url = scheduler_url("--cluster", cluster)?;
    if opts.shard.is_some() {
        return Err(config_error(
            "--shard and --cluster are two ways to split a job: use one",
        ));
    }
    if pipeline.sink.parquet.as_ref().is_some_and(|p| p.is_delta()) {
        return Err(config_error(
            "sink.parquet.format: delta on a cluster is not supported yet (the executors' tasks would each write data files for one commit the client makes); write the Delta output from a local run, or write Parquet parts on the cluster",
        ));
    }
    for (name, table) in &pipeline.source.tables {
        let delta = table.format == Some(crate::plan::source::TableFormat::Delta)
            || crate::storage::delta::is_delta_table(&table.path, &pipeline.storage).await;
        if delta {
            return Err(config_error(format!(
                "table `{name}` is a Delta table, which a cluster run cannot read yet (the executors' tasks cannot receive the Delta scan); run the pipeline locally, or split it with --shard"
            )));
        }
    }
    let partitions = partitions.unwrap_or(DEFAULT_PARTITIONS).max(1);
    let (jobs, api) = shutdown
        .until(connect(pipeline, &url, cluster, wait_for_executors))
        .await?;
    let mut on_cluster = ClusterPhases::new(jobs, api, partitions);
    crate::driver::run(pipeline, opts, shutdown, &mut on_cluster).await
}
