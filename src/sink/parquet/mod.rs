//! Parquet sink: streams row groups to one file and publishes it atomically.
//!
//! The file is written through `object_store` (local disk or S3): a multipart upload that
//! becomes visible under its final name only when completed, so a failed run leaves no file that
//! looks finished. Locally the upload is a staging file beside the output ([`staging`]); S3
//! aborts the multipart upload. Row groups are capped (`row_group_rows`), which bounds the
//! writer's memory.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use object_store::buffered::BufWriter;

use super::{Sink, SinkReport};
pub mod config;
pub mod delta;
pub mod layout;
pub mod overlap;
#[doc(hidden)]
pub mod staging;

use crate::storage::lock::OutputLock;
use crate::storage::{OutputLocation, StorageSpec};
use config::ParquetSinkSpec;
use layout::Layout;

pub struct ParquetSink {
    location: OutputLocation,
    schema: SchemaRef,
    writer: AsyncArrowWriter<BufWriter>,
    rows: u64,
    /// Held from open to publish or abort: one run writes an output at a time (a cluster job's
    /// client holds it for all the parts).
    lock: Option<OutputLock>,
    /// How the job that writes this file is split ([`layout`]).
    layout: Layout,
}

impl ParquetSink {
    /// Checks the destination is writable and opens the writer; embeds nothing.
    pub async fn create(
        spec: &ParquetSinkSpec,
        storage: &StorageSpec,
        schema: SchemaRef,
        shard: Option<crate::shard::Shard>,
    ) -> Result<ParquetSink> {
        let location = OutputLocation::for_parquet_part(&spec.path, storage, shard)?;
        location.check_writable().await?;
        let lock = OutputLock::acquire(
            Arc::clone(&location.store),
            object_store::path::Path::from(format!("{}.embedflow-lock", location.path)),
            format!("{}.embedflow-lock", location.display),
        )
        .await?;
        if let Some(shard) = shard
            && let Err(e) =
                layout::check_shard_fits(&location.store, &location.path, &location.display, shard)
                    .await
        {
            lock.release().await;
            return Err(e);
        }
        // Only the lock's holder may clean up: another run's staging file is not stale.
        if let Some(dir) = location.local_dir() {
            staging::remove_stale(dir, location.file_name());
        }
        Self::open_at(location, spec, schema, Some(lock), Layout::of_shard(shard))
    }

    /// Opens a writer at `location` without taking its lock: for one part of a cluster job, whose
    /// client holds the output's lock and publishes the parts together.
    pub fn create_part(
        location: OutputLocation,
        spec: &ParquetSinkSpec,
        schema: SchemaRef,
    ) -> Result<ParquetSink> {
        Self::open_at(location, spec, schema, None, Layout::Cluster)
    }

    fn open_at(
        location: OutputLocation,
        spec: &ParquetSinkSpec,
        schema: SchemaRef,
        lock: Option<OutputLock>,
        layout: Layout,
    ) -> Result<ParquetSink> {
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![layout.key_value()]))
            .set_max_row_group_row_count(Some(spec.row_group_rows))
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
            .build();
        // Bytes leave memory in parts of this size, at most two in flight: a failed part (disk
        // full, a lost connection) stops the run at the next part, not at the end.
        let part_bytes = if location.is_remote() {
            5 << 20 // S3's smallest part
        } else {
            1 << 20
        };
        let object_writer = BufWriter::with_capacity(
            Arc::clone(&location.store),
            location.path.clone(),
            part_bytes,
        )
        .with_max_concurrency(2);
        let writer = AsyncArrowWriter::try_new(object_writer, Arc::clone(&schema), Some(props))
            .with_context(|| format!("cannot start Parquet output {}", location.display))?;
        Ok(ParquetSink {
            location,
            schema,
            writer,
            rows: 0,
            lock,
            layout,
        })
    }
}

#[async_trait]
impl Sink for ParquetSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        // Batches carry the plan's field flags; the file's schema is fixed at open.
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), batch.columns().to_vec())
            .with_context(|| {
                format!(
                    "output {}: batch does not fit the output schema",
                    self.location.display
                )
            })?;
        let written = self.rows;
        self.writer.write(&batch).await.with_context(|| {
            format!(
                "cannot write {} (after {written} rows)",
                self.location.display
            )
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<SinkReport> {
        let ParquetSink {
            location,
            writer,
            rows,
            lock,
            layout,
            ..
        } = *self;
        let mut closed = writer
            .close()
            .await
            .map(drop)
            .with_context(|| format!("cannot publish {}", location.display));
        // A whole run's output replaces another layout's parts in its folder (still locked).
        if closed.is_ok() && layout == Layout::Whole && lock.is_some() {
            closed =
                layout::replace_other_parts(&location.store, &location.path, &location.display)
                    .await;
        }
        if let Some(lock) = lock {
            lock.release().await;
        }
        closed?;
        Ok(SinkReport {
            rows_written: rows,
            location: location.display,
            ..Default::default()
        })
    }

    fn abort_outcome(&self) -> &'static str {
        "nothing was published; the previous output is as it was"
    }

    async fn abort(self: Box<Self>) {
        let ParquetSink {
            location,
            writer,
            lock,
            ..
        } = *self;
        let mut inner = writer.into_inner();
        if let Err(e) = inner.abort().await {
            tracing::warn!("could not discard partial output {}: {e}", location.display);
        }
        if let Some(lock) = lock {
            lock.release().await;
        }
    }
}
