//! `sink.parquet: { format: delta }`: the output as a Delta Lake table (local or `s3://`), one
//! commit per run, `overwrite` (the run's rows replace the table's) or `append`.
//!
//! The batches stream into `deltalake-core`'s writer through a bounded channel (a DataFusion
//! streaming table as its input plan), which writes the data files and commits them in one
//! transaction when the run finishes. A run that fails or stops commits nothing: readers keep
//! the table's previous version (the data files written so far are not part of any version;
//! Delta's `VACUUM` removes them).

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::datasource::provider_as_source;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use deltalake_core::DeltaTable;
use deltalake_core::protocol::SaveMode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{DeltaMode, ParquetSinkSpec};
use crate::sink::{Sink, SinkReport};
use crate::storage::StorageSpec;

/// Batches waiting for the Delta writer: backpressure, not buffering.
const IN_FLIGHT: usize = 2;

pub struct DeltaSink {
    path: String,
    schema: SchemaRef,
    tx: Option<mpsc::Sender<datafusion::error::Result<RecordBatch>>>,
    /// The writer's task, until it has been awaited.
    writer: Option<JoinHandle<deltalake_core::DeltaResult<DeltaTable>>>,
    rows: u64,
}

/// The run's batches as the one partition of a streaming table.
#[derive(Debug)]
struct Incoming {
    schema: SchemaRef,
    rx: Mutex<Option<mpsc::Receiver<datafusion::error::Result<RecordBatch>>>>,
}

impl PartitionStream for Incoming {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let rx = self.rx.lock().ok().and_then(|mut r| r.take());
        let stream = futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let item = rx.recv().await?;
            Some((item, Some(rx)))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        ))
    }
}

impl DeltaSink {
    /// Opens the table (or prepares to create it) and starts its writer.
    pub async fn open(
        spec: &ParquetSinkSpec,
        storage: &StorageSpec,
        schema: SchemaRef,
    ) -> Result<DeltaSink> {
        if !crate::storage::is_remote(&spec.path) {
            std::fs::create_dir_all(&spec.path)
                .with_context(|| format!("cannot create the Delta output folder {}", spec.path))?;
        }
        let table =
            crate::storage::delta::for_write("sink.parquet.path", &spec.path, storage).await?;
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        let incoming = Incoming {
            schema: Arc::clone(&schema),
            rx: Mutex::new(Some(rx)),
        };
        let input = StreamingTable::try_new(Arc::clone(&schema), vec![Arc::new(incoming)])?;
        let input = LogicalPlanBuilder::scan(
            "embedflow_output",
            provider_as_source(Arc::new(input)),
            None,
        )?
        .build()?;
        let mode = match spec.delta_mode() {
            DeltaMode::Overwrite => SaveMode::Overwrite,
            DeltaMode::Append => SaveMode::Append,
        };
        // Delta's own planner (its write plan has nodes of its own), on embedflow's memory pool.
        let session = deltalake_core::delta_datafusion::DeltaSessionContext::with_runtime_env(
            crate::plan::memory::runtime(),
        )
        .state();
        let write = table
            .write(Vec::new())
            .with_input_plan(input)
            .with_save_mode(mode)
            .with_session_state(Arc::new(session));
        let writer = tokio::spawn(async move { write.await });
        Ok(DeltaSink {
            path: spec.path.clone(),
            schema,
            tx: Some(tx),
            writer: Some(writer),
            rows: 0,
        })
    }

    /// Waits for the writer to end (the input closed): the table it committed.
    async fn wait(&mut self) -> Result<DeltaTable> {
        self.tx = None;
        let Some(writer) = self.writer.take() else {
            return Err(anyhow!(
                "Delta output {}: the writer has stopped",
                self.path
            ));
        };
        match writer.await {
            Ok(Ok(table)) => Ok(table),
            Ok(Err(e)) => Err(anyhow!("Delta output {}: {e}", self.path)),
            Err(e) => Err(anyhow!(
                "Delta output {}: the writer panicked: {e}",
                self.path
            )),
        }
    }
}

#[async_trait]
impl Sink for DeltaSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())
            .with_context(|| {
                format!(
                    "Delta output {}: batch does not fit the output schema",
                    self.path
                )
            })?;
        let rows = batch.num_rows() as u64;
        let sent = match &self.tx {
            Some(tx) => tx.send(Ok(batch)).await.is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped taking batches: its error says why.
            return Err(match self.wait().await {
                Err(e) => e,
                Ok(_) => anyhow!("Delta output {}: the writer stopped early", self.path),
            });
        }
        self.rows += rows;
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        let table = self.wait().await?;
        let version = crate::storage::delta::version_of(&table);
        tracing::info!(
            "Delta output {}: committed version {version} ({} rows)",
            self.path,
            self.rows
        );
        Ok(SinkReport {
            rows_written: self.rows,
            location: format!("{} (Delta version {version})", self.path),
            ..Default::default()
        })
    }

    fn abort_outcome(&self) -> &'static str {
        "nothing was committed; the Delta table is at its previous version"
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx
                .send(Err(DataFusionError::Execution("the run stopped".into())))
                .await;
        }
        if let Some(writer) = self.writer.take()
            && let Ok(Ok(_)) = writer.await
        {
            tracing::warn!(
                "Delta output {}: the writer committed while the run stopped",
                self.path
            );
        }
    }
}
