//! `embedflow scheduler`: a Ballista scheduler that knows embedflow's codecs. Its REST API
//! (`/api/executors`, `/api/jobs`, `/api/job/{id}/stages`) is served on the same port.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::{SchedulerConfig, TaskDistributionPolicy};
use ballista_scheduler::scheduler_process::start_server;

use super::codec::{LogicalCodec, PhysicalCodec};

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// An executor silent for this long is lost: its tasks run again elsewhere.
    pub executor_timeout_secs: u64,
}

/// Serves until the process is stopped.
pub async fn serve(opts: SchedulerOptions) -> Result<()> {
    let config = SchedulerConfig {
        bind_host: opts.bind.ip().to_string(),
        bind_port: opts.bind.port(),
        external_host: opts.bind.ip().to_string(),
        // Executors pull tasks when a slot is free. (Ballista 55's push scheduling leaks the
        // slot of a task it cancels when an executor is lost, and the job then waits forever.)
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        // Spread tasks over executors rather than filling one first: the work is CPU-bound.
        task_distribution: TaskDistributionPolicy::RoundRobin,
        executor_timeout_seconds: opts.executor_timeout_secs,
        expire_dead_executor_interval_seconds: (opts.executor_timeout_secs / 2).clamp(1, 15),
        // The job's object stores (`embedflow.stores`), to decode plans that read `s3://`.
        override_config_producer: Some(Arc::new(super::stores::config_with_stores)),
        override_session_builder: Some(Arc::new(super::stores::scheduler_session)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| anyhow!("cannot start the scheduler: {e}"))?;
    tracing::info!(
        "scheduler listening on {} (run jobs with: embedflow run --cluster df://{} PIPELINE)",
        opts.bind,
        opts.bind
    );
    start_server(cluster, opts.bind, Arc::new(config))
        .await
        .map_err(|e| anyhow!("{e}"))
        .with_context(|| format!("scheduler on {}", opts.bind))
}
