//! The sink wrapper every run writes through: it hands each phase's rows to the sink and, in an
//! incremental run, records in the state's checkpoints what the sink confirmed ([`Tracker`]).
//! One writer runs per place that writes: the one local run, or each partition of a cluster job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::embed::Embedder;
use crate::error::Interrupted;
use crate::incremental::classify::{HIDDEN, OLD_CHUNKS};
use crate::incremental::state::{Checkpoints, DeltaWriter, StateRow};
use crate::incremental::tracker::{Tracker, hidden_rows};
use crate::report::{Progress, RunSummary};
use crate::signals::Shutdown;
use crate::sink::Sink;

/// Rows a Parquet run gathers before writing them to its state file.
const STATE_ROWS_PER_WRITE: usize = 8192;
/// Rows handed to a sink that confirms as it goes between two looks at the checkpoint clock.
const SLICE_ROWS: usize = 64;

/// The phases of a run, in order; each is one plan whose rows go to the writer. A run that is
/// not incremental has one: [`Phase::Embed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// State rows whose id left the source (`id`, `chunks`): deleted from the sink.
    Delete,
    /// Rows whose metadata alone changed (Pinecone): updated in place.
    UpdateMetadata,
    /// New and changed rows: embedded and written.
    Embed,
    /// Rows of the previous Parquet output that stay: written again with their vectors.
    Carry,
}

impl Phase {
    /// True when the phase's rows go into the sink's output (a Parquet part is opened for it).
    pub fn writes_rows(self) -> bool {
        matches!(self, Phase::Embed | Phase::Carry)
    }
}

/// The batch without hidden columns, in the sink's schema.
fn visible(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            batch
                .column_by_name(f.name())
                .cloned()
                .with_context(|| format!("plan output lacks column `{}`", f.name()))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// A schema without hidden columns.
pub fn without_hidden(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with(HIDDEN))
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

/// Hands rows to the sink and, in an incremental run, checkpoints what it confirmed.
pub struct Writer {
    sink: Box<dyn Sink>,
    /// The sink's schema (the embedded rows without hidden columns).
    output: SchemaRef,
    tracker: Tracker,
    /// An incremental run's checkpoints (none for a run without state).
    checkpoints: Option<Checkpoints>,
    /// Parquet: the writer's one checkpoint file, published after the output.
    delta: Option<DeltaWriter>,
    as_it_goes: bool,
    checkpoint_every: Duration,
    summary: RunSummary,
    progress: Progress,
    /// For the progress line's token count (a local run).
    embedder: Option<Arc<Embedder>>,
    /// Rows recorded in the state so far.
    recorded: u64,
    last_checkpoint: Instant,
}

impl Writer {
    pub fn new(
        mut sink: Box<dyn Sink>,
        output: SchemaRef,
        checkpoints: Option<Checkpoints>,
        checkpoint_every: Duration,
        progress: Progress,
        embedder: Option<Arc<Embedder>>,
    ) -> Writer {
        if checkpoints.is_some() {
            sink.track_confirmations();
        }
        let as_it_goes = checkpoints.is_some() && sink.confirms_as_it_goes();
        Writer {
            sink,
            output,
            tracker: Tracker::default(),
            checkpoints,
            delta: None,
            as_it_goes,
            checkpoint_every,
            summary: RunSummary::default(),
            progress,
            embedder,
            recorded: 0,
            last_checkpoint: Instant::now(),
        }
    }

    /// Hands every row of `input` (one phase's plan) to the sink, checkpointing as it goes,
    /// until the input ends or a signal arrives.
    pub async fn pump(
        &mut self,
        mut input: impl Stream<Item = datafusion::error::Result<RecordBatch>> + Unpin,
        phase: Phase,
        mut shutdown: Shutdown,
    ) -> Result<()> {
        let mut ticks = tokio::time::interval(self.checkpoint_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            let item = tokio::select! {
                item = input.next() => item,
                _ = ticks.tick(), if self.as_it_goes => {
                    self.checkpoint().await?;
                    continue;
                }
                signal = shutdown.requested() => {
                    return Err(Interrupted { signal, outcome: String::new() }.into());
                }
            };
            let Some(item) = item else { break };
            // The input's errors pass through as they are (a cluster tells a lost shuffle
            // input by its type).
            let batch = item?;
            match phase {
                Phase::Delete => self.delete(&batch).await?,
                Phase::UpdateMetadata => self.update_metadata(&batch).await?,
                Phase::Embed => {
                    let rows = batch.num_rows() as u64;
                    let (batch, skipped) = crate::sink::keep_embedded(&batch)?;
                    self.summary.rows_read += rows;
                    self.summary.rows_skipped += skipped;
                    self.summary.rows_embedded += rows - skipped;
                    self.write(&batch).await?;
                    let tokens = self.embedder.as_ref().map_or(0, |e| e.tokens_seen());
                    self.progress.advance(self.summary.rows_read, tokens);
                }
                Phase::Carry => self.write(&batch).await?,
            }
            let due = if self.checkpoints.is_none() {
                false
            } else if self.as_it_goes {
                self.last_checkpoint.elapsed() >= self.checkpoint_every
            } else {
                self.tracker.ready_len() >= STATE_ROWS_PER_WRITE
            };
            if due {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    async fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.checkpoints.is_none() {
            if batch.num_rows() > 0 {
                self.sink.write(visible(batch, &self.output)?).await?;
            }
            return Ok(());
        }
        if !self.as_it_goes {
            let hidden = hidden_rows(batch)?;
            self.sink.write(visible(batch, &self.output)?).await?;
            self.tracker.held(hidden.rows.into_iter().map(|(r, _)| r));
            return Ok(());
        }
        // A sink that confirms as it goes takes a batch in slices, with a checkpoint whenever
        // one is due: a slow index must not hold confirmed rows out of the state.
        let mut offset = 0;
        while offset < batch.num_rows() {
            let len = SLICE_ROWS.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, len);
            offset += len;
            let hidden = hidden_rows(&slice)?;
            self.sink.write(visible(&slice, &self.output)?).await?;
            self.tracker.sent(hidden);
            if self.last_checkpoint.elapsed() >= self.checkpoint_every {
                self.checkpoint().await?;
            }
        }
        Ok(())
    }

    /// Deletes the vectors of state rows gone from the source (`id`, `chunks`).
    async fn delete(&mut self, batch: &RecordBatch) -> Result<()> {
        let ids = cast(batch.column(0), &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let chunks = cast(batch.column(1), &DataType::Int32)?;
        let chunks = chunks.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        let mut vectors = Vec::new();
        let mut gone = Vec::with_capacity(batch.num_rows());
        for i in 0..batch.num_rows() {
            let id = ids.value(i);
            let n = chunks.value(i);
            vectors.extend(StateRow::vector_ids(id, n));
            gone.push(StateRow {
                id: id.to_string(),
                text_fp: String::new(),
                meta_fp: String::new(),
                chunks: n,
                deleted: true,
            });
        }
        self.sink.delete(vectors).await?;
        self.tracker.held(gone);
        Ok(())
    }

    /// Sets the new metadata on each vector of the rows (one per chunk).
    async fn update_metadata(&mut self, batch: &RecordBatch) -> Result<()> {
        let hidden = hidden_rows(batch)?;
        let ids = cast(
            batch.column_by_name("id").context("no id column")?,
            &DataType::Utf8,
        )?;
        let ids = ids.as_string::<i32>();
        let old = cast(
            batch.column_by_name(OLD_CHUNKS).context("no chunk count")?,
            &DataType::Int32,
        )?;
        let old = old.as_primitive::<datafusion::arrow::datatypes::Int32Type>();
        let mut vector_ids = Vec::new();
        let mut rows = Vec::new();
        for i in 0..batch.num_rows() {
            for v in StateRow::vector_ids(ids.value(i), old.value(i)) {
                vector_ids.push(v);
                rows.push(i as u32);
            }
        }
        let rows = UInt32Array::from(rows);
        let mut fields = vec![Arc::new(Field::new("id", DataType::Utf8, false))];
        let mut columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from(vector_ids))];
        for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
            if f.name() == "id" || f.name().starts_with(HIDDEN) {
                continue;
            }
            fields.push(Arc::clone(f));
            columns.push(take(c.as_ref(), &rows, None)?);
        }
        let expanded = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        self.sink.update_metadata(expanded).await?;
        self.tracker.held(hidden.rows.into_iter().map(|(r, _)| r));
        Ok(())
    }

    /// Records in the state what the sink holds. For Pinecone: take the confirmations, delete
    /// the chunks rows no longer have, then publish a checkpoint file.
    async fn checkpoint(&mut self) -> Result<()> {
        self.last_checkpoint = Instant::now();
        let Some(checkpoints) = &mut self.checkpoints else {
            return Ok(());
        };
        if self.as_it_goes {
            let confirmed = self.sink.take_confirmed();
            self.tracker.confirmed(confirmed);
            let stale = self.tracker.take_stale();
            if !stale.is_empty() {
                self.sink.delete(stale).await?;
                self.tracker.stale_deleted();
            }
            self.publish_ready().await
        } else {
            let rows = self.tracker.take_ready();
            if rows.is_empty() {
                return Ok(());
            }
            if self.delta.is_none() {
                self.delta = Some(checkpoints.delta()?);
            }
            if let Some(d) = &mut self.delta {
                d.write(&rows).await?;
            }
            self.recorded += rows.len() as u64;
            Ok(())
        }
    }

    /// Publishes the rows ready now as one checkpoint file.
    async fn publish_ready(&mut self) -> Result<()> {
        let Some(checkpoints) = &mut self.checkpoints else {
            return Ok(());
        };
        let rows = self.tracker.take_ready();
        if rows.is_empty() {
            return Ok(());
        }
        let mut delta = checkpoints.delta()?;
        delta.write(&rows).await?;
        delta.publish().await?;
        self.recorded += rows.len() as u64;
        tracing::debug!("checkpoint: {} rows recorded in the state", rows.len());
        Ok(())
    }

    /// Publishes the output, then its checkpoint file (a Parquet state follows its output),
    /// and returns what was done.
    pub async fn finish(mut self) -> Result<RunSummary> {
        if self.as_it_goes {
            // Everything in flight lands (or goes to the dead-letter file) before the last
            // checkpoint.
            self.sink.flush().await?;
        }
        self.checkpoint().await?;
        let unconfirmed = self.tracker.unconfirmed();
        let mut delta = self.delta.take();
        // Staged checkpoints join the state only when the output does: they are written before
        // the sink finishes, so that a bulk import the sink starts and a later run follows to
        // its end still finds what this run embedded.
        if self.checkpoints.as_ref().is_some_and(|c| c.staged())
            && let Some(d) = delta.take()
        {
            d.publish().await?;
        }
        let report = self.sink.finish().await?;
        if let Some(d) = delta {
            d.publish().await?;
        }
        if unconfirmed > 0 {
            tracing::warn!(
                "{unconfirmed} rows were not confirmed by the sink: they are not in the state, and the next run embeds them again"
            );
        }
        self.progress.finish();
        let mut s = self.summary;
        s.record_sink(report);
        s.stream_seconds = self.progress.elapsed();
        Ok(s)
    }

    /// Stops: Pinecone keeps what it confirmed, and the state records it; a Parquet output and
    /// its checkpoint file are discarded.
    pub async fn abort(mut self, e: anyhow::Error) -> anyhow::Error {
        self.progress.finish();
        if self.as_it_goes {
            let confirmed = self.sink.take_confirmed();
            self.tracker.confirmed(confirmed);
            if let Err(w) = self.publish_ready().await {
                tracing::warn!("cannot record the last checkpoint: {w:#}");
            }
        } else if let Some(d) = self.delta.take() {
            d.discard().await;
        }
        let outcome = if self.as_it_goes {
            format!(
                "the state records the {} rows the index confirmed; a re-run embeds only the rest",
                self.recorded
            )
        } else {
            self.sink.abort_outcome().to_string()
        };
        self.sink.abort().await;
        match e.downcast::<Interrupted>() {
            Ok(i) => Interrupted {
                signal: i.signal,
                outcome,
            }
            .into(),
            Err(e) => e,
        }
    }
}
