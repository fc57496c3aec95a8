//! A run on the cluster: the run (the model, the plan, the id checks, an incremental run's state
//! and phases) is the one [`crate::driver::run`] drives; each phase is a Ballista job whose
//! partitions write through the run's writer ([`PartitionedSinkExec`]), each partition into its
//! own Parquet part (staged, and published by this client when every phase succeeded) or into
//! the index. In an incremental run ([`IncrementalPart`]) each partition also checkpoints what
//! its sink confirmed into the state folder, which must be shared storage (`s3://`, or a folder
//! every executor sees): Pinecone checkpoints are part of the state as soon as a task writes
//! them; a Parquet output's are staged and published by the client after the output.

use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::DataFrame;

use super::jobs::{Jobs, job_plan, physical_plan_for_cluster, spread};
use super::publish::Staging;
use super::scheduler_api::SchedulerApi;
use crate::driver::executor::{Collector, Executor, Opening};
use crate::driver::partitioned::{IncrementalPart, PartTarget, add_partition_rows};
use crate::driver::writer::Phase;
use crate::error::Interrupted;
use crate::report::RunSummary;
use crate::signals::Shutdown;
use crate::sink::SinkKind;
use crate::sink::pinecone::import::ImportTarget;

pub struct ClusterPhases {
    jobs: Jobs,
    api: SchedulerApi,
    partitions: usize,
    staging: Option<Staging>,
    /// A bulk import: the tasks write its files, this client starts and follows it.
    import: Option<ImportTarget>,
    target: Option<PartTarget>,
    output: String,
    summary: RunSummary,
}

impl ClusterPhases {
    pub(super) fn new(jobs: Jobs, api: SchedulerApi, partitions: usize) -> ClusterPhases {
        ClusterPhases {
            jobs,
            api,
            partitions,
            staging: None,
            import: None,
            target: None,
            output: String::new(),
            summary: RunSummary::default(),
        }
    }

    async fn submit(
        &self,
        root: Arc<dyn ExecutionPlan>,
        shutdown: &Shutdown,
    ) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
        let mut signals = shutdown.clone();
        tokio::select! {
            batches = self.jobs.collect(root) => batches,
            signal = signals.requested() => Err(Interrupted { signal, outcome: String::new() }.into()),
        }
    }
}

#[async_trait]
impl Executor for ClusterPhases {
    fn collector(&self) -> Collector {
        let jobs = self.jobs.clone();
        Arc::new(move |frame: DataFrame| {
            let jobs = jobs.clone();
            Box::pin(async move { jobs.collect(physical_plan_for_cluster(&frame).await?).await })
        })
    }

    fn stages_checkpoints(&self) -> bool {
        true
    }

    async fn open(&mut self, o: Opening<'_>) -> Result<()> {
        let pipeline = o.pipeline;
        let dim = o.dim;
        match pipeline.sink.kind()? {
            SinkKind::Parquet(spec) => {
                let staging = Staging::prepare(spec, &pipeline.storage).await?;
                self.output = spec.path.trim_end_matches('/').to_string();
                self.staging = Some(staging);
            }
            SinkKind::Pinecone(spec) if spec.import.is_some() => {
                // The import's preflight and marker, before any executor starts.
                let import = ImportTarget::prepare(spec, &pipeline.storage, dim).await?;
                self.output = import.uri().to_string();
                self.import = Some(import);
            }
            SinkKind::Pinecone(spec) => {
                // The same preflight a local run makes, before any executor starts.
                crate::sink::pinecone::connect(spec, Some(dim)).await?;
                self.output = format!("pinecone index {}", spec.index);
            }
        }
        let mut target = PartTarget::new(
            &pipeline.sink,
            &pipeline.storage,
            self.staging.as_ref().map(|s| s.parts.clone()),
        );
        if let Some(p) = target.sink.pinecone.as_mut()
            && p.dead_letter.is_none()
        {
            p.dead_letter = Some(crate::sink::pinecone::default_dead_letter(&p.index));
        }
        target.incremental = o.checkpoints.map(|checkpoints| IncrementalPart {
            phase: Phase::Embed,
            checkpoints,
            checkpoint_secs: o.checkpoint_every.as_secs().max(1),
            dim,
        });
        self.target = Some(target);
        Ok(())
    }

    async fn phase(&mut self, frame: DataFrame, phase: Phase, shutdown: &Shutdown) -> Result<()> {
        let Some(mut target) = self.target.clone() else {
            anyhow::bail!("the job's sink is not open");
        };
        if let Some(i) = target.incremental.as_mut() {
            i.phase = phase;
        }
        let plan = physical_plan_for_cluster(&frame).await?;
        let root = job_plan(spread(plan, self.partitions)?, target);
        tracing::info!(
            "submitting the {phase:?} phase: {} partitions",
            self.partitions
        );
        let batches = self.submit(root, shutdown).await?;
        add_partition_rows(&mut self.summary, &batches)?;
        Ok(())
    }

    async fn finish(&mut self) -> Result<RunSummary> {
        let mut summary = std::mem::take(&mut self.summary);
        if let Some(import) = self.import.as_mut() {
            // Every task wrote its files: one import of them all.
            let files = import.written_files().await?;
            let report = import.start(files, summary.rows_written).await?;
            summary.record_sink(report);
            return Ok(summary);
        }
        summary.output = match self.staging.take() {
            Some(staging) => {
                let parts = staging.publish().await?;
                format!("{} ({parts} parts)", self.output)
            }
            None => self.output.clone(),
        };
        Ok(summary)
    }

    async fn abort(&mut self, e: anyhow::Error) -> anyhow::Error {
        self.api.cancel_jobs_named(self.jobs.name()).await;
        let incremental = self
            .target
            .as_ref()
            .is_some_and(|t| t.incremental.is_some());
        let outcome = if let Some(import) = self.import.take() {
            import.discard().await;
            import.abort_outcome()
        } else {
            match self.staging.take() {
                Some(staging) => {
                    staging.discard().await;
                    if incremental {
                        "nothing was published; the previous output and its state are as they were"
                    } else {
                        "nothing was published; the previous output is as it was"
                    }
                }
                None if self.target.is_none() => "nothing was written",
                None if incremental => {
                    "the state records what the index confirmed at the tasks' last checkpoints; a re-run embeds only the rest"
                }
                None => {
                    "vectors upserted before the signal stay in the index; a re-run overwrites them"
                }
            }
        };
        match e.downcast::<Interrupted>() {
            Ok(i) => Interrupted {
                signal: i.signal,
                outcome: outcome.to_string(),
            }
            .into(),
            Err(e) => e,
        }
    }
}
