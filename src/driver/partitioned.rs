//! The sink as an execution node that writes each input partition on its own: the parallel
//! write of a cluster job, where each executor writes the partitions it runs.
//!
//! Each partition opens the pipeline's sink for itself: a Pinecone index is written directly
//! (upserts by id, so a task that Ballista runs again overwrites the same vectors), a Parquet
//! output gets a part in a staging folder that the client publishes only when the whole job
//! succeeded, named by the ids it holds ([`PartName`]), so a task run again rewrites the same
//! part. Each partition yields one row: what it read, embedded, wrote and could not write
//! ([`partition_schema`]).
//!
//! The node carries the sink's settings without secrets ([`PartTarget`]): an executor reads the
//! API key from its own environment.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::driver::writer::{Phase, Writer, without_hidden};
use crate::incremental::state::CheckpointTarget;
use crate::report::RunSummary;
use crate::sink::parquet::ParquetSink;
use crate::sink::part_name::PartName;
use crate::sink::pinecone::PineconeSink;
use crate::sink::{Sink, SinkKind, SinkSpec};
use crate::storage::{OutputLocation, StorageSpec};

/// Where the partitions write: what travels to executors in the plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartTarget {
    /// The sink's settings, with the API key left out.
    pub sink: SinkSpec,
    pub storage: StorageSpec,
    /// Parquet: the staging folder of this job's parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<String>,
    /// An incremental run's phase: each partition writes through the incremental writer and
    /// checkpoints what its sink confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalPart>,
}

/// What a partition of an incremental run's phase needs beside the sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncrementalPart {
    pub phase: Phase,
    /// Where the partition's checkpoints go (staged for a Parquet output).
    pub checkpoints: CheckpointTarget,
    pub checkpoint_secs: u64,
    /// The vectors' width, for the index's preflight in phases without vectors.
    pub dim: usize,
}

impl PartTarget {
    /// The target of `sink`, without its secrets.
    pub fn new(sink: &SinkSpec, storage: &StorageSpec, parts: Option<String>) -> PartTarget {
        let mut sink = sink.clone();
        if let Some(p) = sink.pinecone.as_mut() {
            p.api_key = None;
        }
        PartTarget {
            sink,
            storage: storage.clone(),
            parts,
            incremental: None,
        }
    }

    /// Opens the sink for one task: a Parquet part, or a bulk import's files, is written under
    /// a temporary name and named by its rows once complete ([`PartName`]), so a task that
    /// Ballista runs again replaces its own output.
    async fn open(
        &self,
        schema: SchemaRef,
        task: &str,
    ) -> anyhow::Result<(Box<dyn Sink>, Option<Pending>)> {
        let phase = self.incremental.as_ref().map(|i| i.phase);
        let schema = match phase {
            Some(_) => without_hidden(&schema),
            None => schema,
        };
        Ok(match self.sink.kind()? {
            // A phase that only records (ids gone from the source) writes no part.
            SinkKind::Parquet(_) if phase.is_some_and(|p| !p.writes_rows()) => {
                (Box::new(StateOnly), None)
            }
            SinkKind::Parquet(spec) => {
                let Some(parts) = &self.parts else {
                    anyhow::bail!("a partitioned Parquet write needs a staging folder");
                };
                let parts = parts.trim_end_matches('/');
                let location = OutputLocation::for_parquet_sink(
                    &format!("{parts}/.{task}.parquet"),
                    &self.storage,
                )?;
                // The client made the staging folder; gone, it means the job was stopped or
                // failed: a late task must not bring it back.
                if let Some(dir) = location.local_dir()
                    && !dir.is_dir()
                {
                    anyhow::bail!(
                        "the job's staging folder {} is gone: the job was stopped or failed",
                        dir.display()
                    );
                }
                let pending = Pending {
                    store: Arc::clone(&location.store),
                    path: location.path.clone(),
                    folder: parts.to_string(),
                };
                (
                    Box::new(ParquetSink::create_part(location, spec, schema)?),
                    Some(pending),
                )
            }
            SinkKind::Pinecone(spec) if spec.import.is_some() => {
                match phase {
                    // The import is the first load of a new namespace: nothing to delete.
                    Some(p) if !p.writes_rows() => (Box::new(StateOnly), None),
                    _ => {
                        let files = crate::sink::pinecone::import::ImportFiles::for_task(
                            spec,
                            &self.storage,
                            &schema,
                            task,
                        )?;
                        (Box::new(files), None)
                    }
                }
            }
            SinkKind::Pinecone(spec) => {
                // Each task keeps its own dead-letter file.
                let mut spec = spec.clone();
                let base = spec
                    .dead_letter
                    .clone()
                    .unwrap_or_else(|| crate::sink::pinecone::default_dead_letter(&spec.index));
                let stem = base.to_string_lossy();
                let stem = stem.strip_suffix(".jsonl").unwrap_or(&stem);
                spec.dead_letter = Some(format!("{stem}-{task}.jsonl").into());
                let sink = match &self.incremental {
                    Some(i) if !i.phase.writes_rows() => {
                        PineconeSink::open_without_vectors(&spec, &schema, i.dim).await?
                    }
                    _ => PineconeSink::open(&spec, &schema).await?,
                };
                (Box::new(sink), None)
            }
        })
    }
}

/// The sink of a phase that only records in the state (a Parquet output rebuilt whole has
/// nothing to delete).
struct StateOnly;

#[async_trait::async_trait]
impl Sink for StateOnly {
    async fn write(&mut self, _batch: RecordBatch) -> anyhow::Result<()> {
        anyhow::bail!("this phase writes no rows")
    }

    async fn finish(self: Box<Self>) -> anyhow::Result<crate::report::SinkReport> {
        Ok(crate::report::SinkReport::default())
    }

    async fn abort(self: Box<Self>) {}

    fn abort_outcome(&self) -> &'static str {
        "nothing was written"
    }
}

/// `task-<pid>-<n>`: unique to one task of this process.
fn next_task_name() -> String {
    static TASKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = TASKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("task-{}-{n}", std::process::id())
}

/// A Parquet part written under its temporary name.
struct Pending {
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    folder: String,
}

/// One row per partition: what it did.
pub fn partition_schema() -> SchemaRef {
    let count = |name: &str| Field::new(name, DataType::UInt64, false);
    Arc::new(Schema::new(vec![
        count("rows_read"),
        count("rows_embedded"),
        count("rows_skipped"),
        count("rows_written"),
        count("rows_failed"),
        count("requests"),
        count("retries"),
        count("tokens"),
        Field::new("output", DataType::Utf8, false),
        // The rows' name (`PartName`): a task run twice reports the same rows twice.
        Field::new("part", DataType::Utf8, false),
        Field::new("dead_letter", DataType::Utf8, true),
        Field::new("worker", DataType::Utf8, false),
    ]))
}

/// Adds the partition reports of a job to `summary`, each set of rows once: after an executor is
/// lost, Ballista may hand over the reports of a task and of its re-run. Returns the number of
/// distinct reports.
pub fn add_partition_rows(
    summary: &mut RunSummary,
    batches: &[RecordBatch],
) -> anyhow::Result<usize> {
    let mut seen = std::collections::HashSet::new();
    for batch in batches {
        let parts = batch
            .column_by_name("part")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| anyhow::anyhow!("partition report has no `part` column"))?;
        let keep: Vec<bool> = parts
            .iter()
            .map(|p| seen.insert(p.unwrap_or_default().to_string()))
            .collect();
        let batch = datafusion::arrow::compute::filter_record_batch(
            batch,
            &datafusion::arrow::array::BooleanArray::from(keep),
        )?;
        add_reports(summary, &batch)?;
    }
    Ok(seen.len())
}

fn add_reports(summary: &mut RunSummary, batch: &RecordBatch) -> anyhow::Result<()> {
    let counts = |name: &str| -> anyhow::Result<&UInt64Array> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>())
            .ok_or_else(|| anyhow::anyhow!("partition report has no `{name}` counts"))
    };
    let text = |name: &str| -> anyhow::Result<&StringArray> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| anyhow::anyhow!("partition report has no `{name}` column"))
    };
    let sum = |name: &str| -> anyhow::Result<u64> { Ok(counts(name)?.values().iter().sum()) };
    summary.rows_read += sum("rows_read")?;
    summary.rows_embedded += sum("rows_embedded")?;
    summary.rows_skipped += sum("rows_skipped")?;
    summary.rows_written += sum("rows_written")?;
    summary.rows_failed += sum("rows_failed")?;
    summary.tokens += sum("tokens")?;
    let requests = sum("requests")?;
    if requests > 0 {
        *summary.requests.get_or_insert(0) += requests;
        *summary.retries.get_or_insert(0) += sum("retries")?;
    }
    let workers = summary.partitions_by_worker.get_or_insert_default();
    for w in text("worker")?.iter().flatten() {
        *workers.entry(w.to_string()).or_default() += 1;
    }
    let dead = text("dead_letter")?;
    for d in dead.iter().flatten() {
        summary.dead_letter = Some(match summary.dead_letter.take() {
            Some(before) => format!("{before}, {d}"),
            None => d.to_string(),
        });
    }
    Ok(())
}

/// Writes each input partition through its own sink.
#[derive(Debug)]
pub struct PartitionedSinkExec {
    input: Arc<dyn ExecutionPlan>,
    target: PartTarget,
    properties: Arc<PlanProperties>,
}

impl PartitionedSinkExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, target: PartTarget) -> PartitionedSinkExec {
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(partition_schema()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        PartitionedSinkExec {
            input,
            target,
            properties: Arc::new(properties),
        }
    }

    pub fn target(&self) -> &PartTarget {
        &self.target
    }

    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for PartitionedSinkExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.target.sink.kind() {
            Ok(SinkKind::Parquet(p)) => write!(
                f,
                "PartitionedSinkExec: parquet {} (one part per partition)",
                p.path
            ),
            Ok(SinkKind::Pinecone(p)) => match &p.import {
                Some(i) => write!(
                    f,
                    "PartitionedSinkExec: import files under {} for pinecone index {}",
                    i.uri, p.index
                ),
                None => write!(f, "PartitionedSinkExec: pinecone index {}", p.index),
            },
            Err(_) => write!(f, "PartitionedSinkExec"),
        }
    }
}

impl ExecutionPlan for PartitionedSinkExec {
    fn name(&self) -> &str {
        "PartitionedSinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return internal_err!("PartitionedSinkExec takes one input");
        }
        Ok(Arc::new(PartitionedSinkExec::new(
            children.swap_remove(0),
            self.target.clone(),
        )))
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let target = self.target.clone();
        let write = async move {
            let (report, tokens) =
                crate::report::counting_partition_tokens(write_partition(input, target)).await;
            report.and_then(|batch| with_tokens(batch, tokens))
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            partition_schema(),
            futures::stream::once(write),
        )))
    }
}

async fn write_partition(
    input: SendableRecordBatchStream,
    target: PartTarget,
) -> Result<RecordBatch> {
    let task = next_task_name();
    let (sink, pending) = target.open(input.schema(), &task).await.map_err(external)?;
    let (summary, name) = write_phase(input, sink, target.incremental.as_ref(), &task).await?;
    finish_partition(pending, summary, name)
        .await
        .map_err(external)
}

/// Runs the partition's rows through the run's writer: the rows that have a vector are
/// written; in an incremental run's phase, what the sink confirmed is checkpointed into the
/// state (staged, for a Parquet output).
async fn write_phase(
    input: SendableRecordBatchStream,
    sink: Box<dyn Sink>,
    part: Option<&IncrementalPart>,
    task: &str,
) -> Result<(RunSummary, PartName)> {
    let output = without_hidden(&input.schema());
    let checkpoints = match part {
        Some(part) => Some(part.checkpoints.writer(task).map_err(external)?),
        None => None,
    };
    let mut writer = Writer::new(
        sink,
        output,
        checkpoints,
        std::time::Duration::from_secs(part.map_or(1, |p| p.checkpoint_secs)),
        crate::report::Progress::new(None, false),
        None,
    );
    let name = Arc::new(std::sync::Mutex::new(PartName::default()));
    let named = {
        let name = Arc::clone(&name);
        input.map(move |batch| {
            let batch = batch?;
            if let Ok(mut n) = name.lock() {
                n.add(&batch).map_err(external)?;
            }
            Ok(batch)
        })
    };
    let phase = part.map_or(Phase::Embed, |p| p.phase);
    match writer
        .pump(named, phase, crate::signals::Shutdown::never())
        .await
    {
        Ok(()) => {}
        Err(e) => {
            let e = writer.abort(e).await;
            // The input's own errors go back as they came: Ballista tells a lost shuffle input
            // (which it recovers from by running the stage that wrote it again) by its type.
            return Err(match e.downcast::<DataFusionError>() {
                Ok(e) => e,
                Err(e) => external(e),
            });
        }
    }
    let summary = writer.finish().await.map_err(external)?;
    let name =
        std::mem::take(&mut *name.lock().map_err(|_| {
            DataFusionError::Internal("a partition's part name was poisoned".into())
        })?);
    Ok((summary, name))
}

/// The partition's report with the tokens its rows took to embed.
fn with_tokens(batch: RecordBatch, tokens: u64) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    let index = batch.schema().index_of("tokens")?;
    columns[index] = Arc::new(UInt64Array::from(vec![tokens]));
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

fn external(e: anyhow::Error) -> DataFusionError {
    DataFusionError::External(e.into())
}

async fn finish_partition(
    pending: Option<Pending>,
    mut summary: RunSummary,
    name: PartName,
) -> anyhow::Result<RecordBatch> {
    if let Some(part) = pending {
        // Complete under its temporary name; now under the name its rows give it.
        use object_store::ObjectStoreExt;
        let file = name.file_name();
        let target = part
            .path
            .parts()
            .take(part.path.parts().count().saturating_sub(1))
            .collect::<object_store::path::Path>()
            .join(file.as_str());
        part.store
            .rename(&part.path, &target)
            .await
            .map_err(|e| anyhow::anyhow!("cannot name the part {file} in {}: {e}", part.folder))?;
        summary.output = format!("{}/{file}", part.folder);
    }
    tracing::info!(
        "{} rows read, {} written to {}",
        summary.rows_read,
        summary.rows_written,
        summary.output
    );
    let worker = format!(
        "{}:{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        std::process::id()
    );
    let one = |v: u64| Arc::new(UInt64Array::from(vec![v])) as _;
    Ok(RecordBatch::try_new(
        partition_schema(),
        vec![
            one(summary.rows_read),
            one(summary.rows_embedded),
            one(summary.rows_skipped),
            one(summary.rows_written),
            one(summary.rows_failed),
            one(summary.requests.unwrap_or(0)),
            one(summary.retries.unwrap_or(0)),
            one(0),
            Arc::new(StringArray::from(vec![summary.output])),
            Arc::new(StringArray::from(vec![name.file_name()])),
            Arc::new(StringArray::from(vec![summary.dead_letter])),
            Arc::new(StringArray::from(vec![worker])),
        ],
    )?)
}
