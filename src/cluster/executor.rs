//! `embedflow executor`: a Ballista executor that knows embedflow's codecs, so it can run
//! `embed()` (loading the model itself, once per process) and write partitions to the sink
//! (with the API key of its own environment).

use std::sync::Arc;

use anyhow::{Result, anyhow};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};

use super::codec::{LogicalCodec, PhysicalCodec};

#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `HOST:PORT` (or `df://HOST:PORT`).
    pub scheduler: String,
    /// Address to bind and to advertise to the scheduler and the other executors.
    pub bind_host: String,
    /// Arrow Flight port (shuffle data and results) and gRPC port (tasks).
    pub flight_port: u16,
    pub grpc_port: u16,
    /// ONNX Runtime threads per task.
    pub threads: Option<usize>,
    /// Tasks run at once; default: the cores divided by `threads`.
    pub task_slots: Option<usize>,
    /// Shuffle files; default: a temporary folder.
    pub work_dir: Option<std::path::PathBuf>,
}

/// Task slots and ONNX Runtime threads that share the cores: slots x threads = cores unless both
/// are given.
pub fn slots_and_threads(
    cores: usize,
    threads: Option<usize>,
    slots: Option<usize>,
) -> (usize, usize) {
    let cores = cores.max(1);
    match (slots, threads) {
        (Some(s), Some(t)) => (s.max(1), t.max(1)),
        (Some(s), None) => (s.max(1), (cores / s.max(1)).max(1)),
        (None, Some(t)) => ((cores / t.max(1)).max(1), t.max(1)),
        (None, None) => (1, cores),
    }
}

/// Serves until the process is stopped (SIGTERM or Ctrl-C end it cleanly).
pub async fn serve(opts: ExecutorOptions) -> Result<()> {
    let url = super::client::scheduler_url("--scheduler", &opts.scheduler)?;
    let address = url.trim_start_matches("http://");
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("--scheduler {}: HOST:PORT", opts.scheduler))?;
    let port: u16 = port.parse()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (slots, threads) = slots_and_threads(cores, opts.threads, opts.task_slots);
    super::models::set_threads(threads);
    tracing::info!(
        "executor: flight port {}, grpc port {}, {slots} task slots x {threads} ONNX Runtime threads, scheduler {host}:{port}",
        opts.flight_port,
        opts.grpc_port
    );
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: Some(opts.bind_host.clone()),
        port: opts.flight_port,
        grpc_port: opts.grpc_port,
        scheduler_host: host.to_string(),
        scheduler_port: port,
        scheduler_connect_timeout_seconds: 30,
        vcores: slots,
        // Pull tasks when a slot is free (see the scheduler).
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: opts.work_dir.map(|d| d.display().to_string()),
        print_thread_info: false,
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| anyhow!("executor: {e}"))
}
