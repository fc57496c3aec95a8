//! `embedflow executor`: a Ballista executor that knows embedflow's codecs, so it can run
//! `embed()` (loading the model itself, once per process) and write partitions to the sink
//! (with the API key of its own environment).

use std::sync::Arc;

use anyhow::{Result, anyhow};
use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};

use super::codec::{LogicalCodec, PhysicalCodec};
use crate::signals::Shutdown;

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

/// Waits until the scheduler accepts connections, backing off from 0.5 s to 10 s between tries
/// and saying so. (Ballista's own connect loop retries every 0.5 s, and its time limit never
/// fires; a signal ends this wait, through the caller's [`Shutdown::until`].)
async fn wait_for_scheduler(host: &str, port: u16) -> Result<()> {
    use backon::Retryable;
    let address = format!("{host}:{port}");
    let connect = || async { tokio::net::TcpStream::connect(address.as_str()).await };
    connect
        .retry(
            backon::ExponentialBuilder::default()
                .with_min_delay(std::time::Duration::from_millis(500))
                .with_max_delay(std::time::Duration::from_secs(10))
                .with_jitter()
                .without_max_times(),
        )
        .notify(|e, wait| {
            tracing::warn!(
                "executor: the scheduler at {address} cannot be reached ({e}); trying again in {:.1} s",
                wait.as_secs_f64()
            )
        })
        .await
        .map(drop)
        .map_err(|e| anyhow!("executor: the scheduler at {address}: {e}"))
}

/// Serves until the process is stopped (SIGTERM or Ctrl-C end it cleanly, waiting for the
/// scheduler included).
pub async fn serve(opts: ExecutorOptions, shutdown: &Shutdown) -> Result<()> {
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
    shutdown.until(wait_for_scheduler(host, port)).await?;
    // Shuffle and spill files: the given folder, or a temporary one removed when serving ends.
    let temporary;
    let work_dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => {
            temporary = tempfile::tempdir()
                .map_err(|e| anyhow!("executor: cannot create a work folder: {e}"))?;
            temporary.path().to_path_buf()
        }
    };
    let spill_dir = work_dir.clone();
    // One memory pool for the executor's tasks (--memory-limit), spilling into the work folder.
    let limit = crate::plan::memory::limit();
    tracing::info!("executor: memory limit for sorts, joins and aggregates {limit}");
    let pool = crate::plan::memory::pool(limit);
    // Each task's runtime gets the S3 clients its job's settings name (`embedflow.stores`).
    let runtime_producer: ballista_core::RuntimeProducer = Arc::new(move |config| {
        let runtime =
            crate::plan::memory::runtime_builder(Arc::clone(&pool), Some(spill_dir.clone()))?
                .build()?;
        super::stores::register_job_stores(config, &runtime)?;
        Ok(Arc::new(runtime))
    });
    let config = ExecutorProcessConfig {
        bind_host: opts.bind_host.clone(),
        external_host: Some(opts.bind_host.clone()),
        port: opts.flight_port,
        grpc_port: opts.grpc_port,
        scheduler_host: host.to_string(),
        scheduler_port: port,
        // One try: wait_for_scheduler has seen it listening.
        scheduler_connect_timeout_seconds: 0,
        vcores: slots,
        // Pull tasks when a slot is free (see the scheduler).
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir: Some(work_dir.display().to_string()),
        override_config_producer: Some(Arc::new(super::stores::config_with_stores)),
        override_runtime_producer: Some(runtime_producer),
        print_thread_info: false,
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| anyhow!("executor: {e}"))
}
