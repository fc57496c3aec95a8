//! Where a run's plans execute and its writers run: on this machine ([`Local`]), or on a
//! Ballista cluster (`crate::cluster::phases`). The run itself (the model, the plan, the id
//! checks, an incremental run's state and phases, the summary) is the same
//! ([`super::run`]); an executor only runs the plans it is given and publishes what they wrote.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::prelude::DataFrame;
use futures::future::BoxFuture;

use super::writer::{Phase, Writer};
use crate::config::Pipeline;
use crate::driver;
use crate::embed::Embedder;
use crate::incremental::state::CheckpointTarget;
use crate::report::{Progress, RunSummary};
use crate::shard::Shard;
use crate::signals::Shutdown;

/// Runs a query and returns its (small) result: the id checks, the counts.
pub type Collector =
    Arc<dyn Fn(DataFrame) -> BoxFuture<'static, Result<Vec<RecordBatch>>> + Send + Sync>;

/// What an executor needs to open the run's destination.
pub struct Opening<'a> {
    pub pipeline: &'a Pipeline,
    /// The sink's schema (the embedded rows without hidden columns).
    pub output: SchemaRef,
    /// Where the writers record what the sink confirmed (an incremental run).
    pub checkpoints: Option<CheckpointTarget>,
    pub checkpoint_every: Duration,
    /// The model (none when the pipeline reads its vectors: `embed.vector`).
    pub embedder: Option<&'a Arc<Embedder>>,
    /// The vectors' width.
    pub dim: usize,
    /// Rows to embed, for the progress bar (when known).
    pub to_embed: Option<u64>,
    pub shard: Option<Shard>,
}

#[async_trait]
pub trait Executor: Send {
    /// Runs queries where the data is.
    fn collector(&self) -> Collector;
    /// True when the writers stage a Parquet output's checkpoints for the driver to publish
    /// after the output ([`super::state::StateStore::publish_pending`]).
    fn stages_checkpoints(&self) -> bool;
    /// Opens the destination (the sink's preflight, its lock).
    async fn open(&mut self, opening: Opening<'_>) -> Result<()>;
    /// Runs one phase: every row of `frame` through a writer.
    async fn phase(&mut self, frame: DataFrame, phase: Phase, shutdown: &Shutdown) -> Result<()>;
    /// Publishes the output (a Parquet output's writers' checkpoints follow it) and returns
    /// what was written.
    async fn finish(&mut self) -> Result<RunSummary>;
    /// Stops after an error or a signal, opened or not (queries it started are cancelled); the
    /// error says what the run leaves behind.
    async fn abort(&mut self, e: anyhow::Error) -> anyhow::Error;
}

/// This machine: the plans on the CPU runtime, one writer on the caller's I/O runtime.
pub struct Local {
    progress: bool,
    rt: Option<tokio::runtime::Runtime>,
    writer: Option<Writer>,
    embedder: Option<Arc<Embedder>>,
}

impl Local {
    pub fn new(progress: bool) -> Local {
        Local {
            progress,
            rt: None,
            writer: None,
            embedder: None,
        }
    }

    /// Stops the plan runtime: after a signal or an abandoned run, `embed()` gives up at the
    /// next micro-batch, so the wait is short.
    async fn stop_runtime(&mut self) {
        if let Some(rt) = self.rt.take() {
            let _ = tokio::task::spawn_blocking(move || {
                rt.shutdown_timeout(crate::signals::plan_shutdown_wait())
            })
            .await;
        }
    }
}

#[async_trait]
impl Executor for Local {
    fn collector(&self) -> Collector {
        Arc::new(crate::plan::checks::collect_here)
    }

    fn stages_checkpoints(&self) -> bool {
        false
    }

    async fn open(&mut self, o: Opening<'_>) -> Result<()> {
        let sink = driver::open_sink_for(o.pipeline, Arc::clone(&o.output), o.shard).await?;
        let checkpoints = match &o.checkpoints {
            Some(c) => Some(c.writer("local")?),
            None => None,
        };
        self.writer = Some(Writer::new(
            sink,
            o.output,
            checkpoints,
            o.checkpoint_every,
            Progress::new(o.to_embed, self.progress),
            o.embedder.cloned(),
        ));
        self.embedder = o.embedder.cloned();
        self.rt = Some(driver::cpu_runtime()?);
        Ok(())
    }

    async fn phase(&mut self, frame: DataFrame, phase: Phase, shutdown: &Shutdown) -> Result<()> {
        let (Some(rt), Some(writer)) = (&self.rt, &mut self.writer) else {
            anyhow::bail!("the run's sink is not open");
        };
        let rx = driver::spawn_plan(rt, frame);
        let batches = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        writer
            .pump(Box::pin(batches), phase, shutdown.clone())
            .await
    }

    async fn finish(&mut self) -> Result<RunSummary> {
        self.stop_runtime().await;
        let writer = self
            .writer
            .take()
            .ok_or_else(|| anyhow::anyhow!("the run's sink is not open"))?;
        let mut summary = writer.finish().await?;
        if let Some(e) = &self.embedder {
            summary.tokens = e.tokens_seen();
        }
        Ok(summary)
    }

    async fn abort(&mut self, e: anyhow::Error) -> anyhow::Error {
        // Nothing embedded from here on would be written: `embed()` gives up at its next
        // micro-batch rather than finishing the record batches in flight.
        if let Some(embedder) = &self.embedder {
            embedder.abandon();
        }
        self.stop_runtime().await;
        if let Some(skipped) = self.embedder.as_ref().map(|e| e.skipped_batches())
            && skipped > 0
        {
            tracing::info!("the run failed: {skipped} micro-batches in flight were not embedded");
        }
        match self.writer.take() {
            Some(w) => w.abort(e).await,
            None => e,
        }
    }
}
