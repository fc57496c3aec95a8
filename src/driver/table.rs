//! The pipeline's sink as a DataFusion table, so SQL can write to it:
//!
//! ```sql
//! INSERT INTO sink SELECT id, embed(text) AS vector, chapter FROM docs
//! ```
//!
//! `insert_into` plans a `DataSinkExec` whose [`SinkWriter`] streams the rows through the same
//! [`Sink`] a `run` uses, with the same guarantees: preflight when the write starts, bounded
//! batches, adaptive concurrency and retries, the dead-letter file, an atomic Parquet output. The
//! summary of the write is kept for the command to print (and to exit 3 on dead letters).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::{DataFusionError, Result, not_impl_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;

use crate::config::Pipeline;
use crate::driver::partitioned::{PartTarget, PartitionedSinkExec};
use crate::report::RunSummary;

/// The table `sink`: its schema is the pipeline's output (`id`, `vector`, metadata columns).
#[derive(Debug)]
pub struct SinkTable {
    pipeline: Pipeline,
    schema: SchemaRef,
    summary: Arc<Mutex<Option<RunSummary>>>,
    /// Set when the table came over the wire to a cluster: each partition then writes on its
    /// own ([`PartitionedSinkExec`]).
    parts: Option<PartTarget>,
}

impl SinkTable {
    pub fn new(pipeline: Pipeline, schema: SchemaRef) -> SinkTable {
        SinkTable {
            pipeline,
            schema,
            summary: Arc::default(),
            parts: None,
        }
    }

    /// The table of a sink decoded from a plan: its inserts write partition by partition.
    pub fn for_target(target: PartTarget, schema: SchemaRef) -> SinkTable {
        let pipeline = Pipeline {
            source: Default::default(),
            embed: crate::embed::EmbedSpec::new(""),
            sink: target.sink.clone(),
            storage: target.storage.clone(),
            incremental: None,
        };
        SinkTable {
            parts: Some(target),
            ..SinkTable::new(pipeline, schema)
        }
    }

    /// What travels when the table is sent to a cluster (the sink's settings, no secrets).
    pub fn target(&self) -> PartTarget {
        self.parts
            .clone()
            .unwrap_or_else(|| PartTarget::new(&self.pipeline.sink, &self.pipeline.storage, None))
    }

    /// The summary of the last INSERT, once it finished.
    pub fn summary(&self) -> Option<RunSummary> {
        self.summary.lock().ok().and_then(|s| s.clone())
    }
}

#[async_trait]
impl TableProvider for SinkTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        _projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan_err!(
            "the table `sink` is written (INSERT INTO sink SELECT ...) and searched (vector_search('sink', ...)), not scanned"
        )
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return not_impl_err!(
                "{insert_op} into the sink: only INSERT INTO sink (a Parquet output is written whole each time)"
            );
        }
        let id = self
            .schema
            .field_with_name("id")
            .map(|f| f.data_type().clone());
        if !matches!(
            id,
            Ok(DataType::Utf8
                | DataType::Utf8View
                | DataType::LargeUtf8
                | DataType::Int64
                | DataType::Int32)
        ) {
            return plan_err!("the sink needs an `id` column of text");
        }
        if let Some(target) = &self.parts {
            return Ok(Arc::new(PartitionedSinkExec::new(input, target.clone())));
        }
        Ok(Arc::new(DataSinkExec::new(
            input,
            Arc::new(SinkWriter {
                pipeline: self.pipeline.clone(),
                schema: Arc::clone(&self.schema),
                summary: Arc::clone(&self.summary),
            }),
            None,
        )))
    }
}

/// Writes an INSERT's rows through the pipeline's sink.
#[derive(Debug)]
pub struct SinkWriter {
    pipeline: Pipeline,
    schema: SchemaRef,
    summary: Arc<Mutex<Option<RunSummary>>>,
}

/// How the sink shows in a plan, the same for `sql` and `explain`.
fn describe(sink: &crate::sink::SinkSpec, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    match sink.kind() {
        Ok(crate::sink::SinkKind::Parquet(p)) => write!(f, "EmbedflowSink: parquet {}", p.path),
        Ok(crate::sink::SinkKind::Pinecone(p)) => {
            write!(f, "EmbedflowSink: pinecone index {}", p.index)
        }
        Err(_) => write!(f, "EmbedflowSink"),
    }
}

impl DisplayAs for SinkWriter {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        describe(&self.pipeline.sink, f)
    }
}

fn external(e: anyhow::Error) -> DataFusionError {
    DataFusionError::External(e.into())
}

#[async_trait]
impl DataSink for SinkWriter {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let start = Instant::now();
        let mut sink = crate::driver::open_sink_for(&self.pipeline, Arc::clone(&self.schema), None)
            .await
            .map_err(external)?;
        let mut summary = RunSummary::default();
        while let Some(batch) = data.next().await {
            let step = async {
                let batch = batch?;
                let rows = batch.num_rows() as u64;
                let (batch, skipped) = crate::sink::keep_embedded(&batch).map_err(external)?;
                summary.rows_read += rows;
                summary.rows_skipped += skipped;
                summary.rows_embedded += rows - skipped;
                if batch.num_rows() > 0 {
                    sink.write(batch).await.map_err(external)?;
                }
                Ok::<(), DataFusionError>(())
            };
            if let Err(e) = step.await {
                sink.abort().await;
                return Err(e);
            }
        }
        let report = sink.finish().await.map_err(external)?;
        summary.record_sink(report);
        summary.seconds = start.elapsed().as_secs_f64();
        summary.stream_seconds = summary.seconds;
        let written = summary.rows_written;
        if let Ok(mut slot) = self.summary.lock() {
            *slot = Some(summary);
        }
        Ok(written)
    }
}
