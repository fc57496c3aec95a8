//! Incremental runs: embed only what changed since the last run, resume after a crash.
//!
//! 1. The state ([`state`]) says, per source id, what the sink holds: fingerprints
//!    ([`fingerprint`]) of the text, the metadata and the embedding settings.
//! 2. The source is read against it ([`classify`]): new and changed rows are embedded; rows
//!    whose metadata alone changed are updated in place (Pinecone) or get their previous
//!    vector (Parquet); with `deletes: true`, ids gone from the source are deleted.
//! 3. The sink confirms what it holds ([`tracker`]), and confirmed rows are checkpointed into the
//!    state every `checkpoint_secs`, so a killed run resumes where it was.

pub mod classify;
pub mod config;
pub mod fingerprint;
pub mod state;
pub mod tracker;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{DataFrame, ParquetReadOptions, ident, lit};
use object_store::ObjectStoreExt;

use crate::config::Pipeline;
use crate::driver::{self, RunOptions};
use crate::embed::Embedder;
use crate::error::Interrupted;
use crate::plan::shard::Shard;
use crate::plan::{self, checks};
use crate::report::{IncrementalCounts, Progress, RunSummary};
use crate::signals::Shutdown;
use crate::sink::{Sink, SinkKind};
use crate::storage::OutputLocation;
use classify::{CHANGED, HIDDEN, METADATA, NEW, OLD_CHUNKS, SOURCE_ID, STATUS, UNCHANGED};
pub use config::IncrementalSpec;
use fingerprint::EmbeddingSettings;
use state::{DeltaWriter, StateRow, StateStore};
use tracker::{Tracker, hidden_rows};

/// Rows a Parquet run gathers before writing them to its state file.
const STATE_ROWS_PER_WRITE: usize = 8192;
/// Rows handed to a sink that confirms as it goes between two looks at the checkpoint clock.
const SLICE_ROWS: usize = 64;

/// Which sink a state describes: a state moved to another sink starts again.
fn sink_identity(pipeline: &Pipeline, shard: Option<Shard>) -> Result<String> {
    let shard_note = shard.map(|s| format!(" shard {s}")).unwrap_or_default();
    Ok(match pipeline.sink.kind()? {
        SinkKind::Parquet(p) => {
            let location = OutputLocation::for_parquet_part(&p.path, &pipeline.storage, shard)?;
            format!("parquet {}", location.display)
        }
        SinkKind::Pinecone(p) => format!(
            "pinecone index {} namespace {}{shard_note}",
            p.index,
            p.namespace.as_deref().unwrap_or("")
        ),
    })
}

/// Runs an incremental pipeline.
pub async fn run(
    pipeline: &Pipeline,
    spec: &IncrementalSpec,
    opts: &RunOptions,
    shutdown: &Shutdown,
) -> Result<RunSummary> {
    let start = Instant::now();
    let embedder = shutdown
        .until(driver::load_embedder(&pipeline.embed))
        .await?;
    let chunking = match &pipeline.embed.chunking {
        Some(c) => Some((c.max_tokens_for(embedder.max_seq_length())?, c.overlap)),
        None => None,
    };
    let settings = {
        let e = Arc::clone(&embedder);
        tokio::task::spawn_blocking(move || EmbeddingSettings::of(&e, chunking))
            .await
            .context("fingerprinting the model panicked")??
    };
    let model_seconds = start.elapsed().as_secs_f64();
    driver::check_destination(pipeline)?;
    let sink_id = sink_identity(pipeline, opts.shard)?;
    // Each shard keeps its own state (and lock) beside the others'.
    let spec = &match opts.shard {
        Some(s) => IncrementalSpec {
            state: format!(
                "{}/shard-{}-of-{}",
                spec.state.trim_end_matches('/'),
                s.index,
                s.count
            ),
            ..spec.clone()
        },
        None => spec.clone(),
    };
    let mut state = shutdown
        .until(StateStore::open(
            spec,
            &pipeline.storage,
            &sink_id,
            opts.full,
        ))
        .await?;
    let result = run_locked(
        pipeline, spec, opts, shutdown, &embedder, &settings, &mut state,
    )
    .await;
    state.release().await;
    let mut summary = result?;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.model_seconds = model_seconds;
    summary.tokens = embedder.tokens_seen();
    summary.rows_truncated = embedder.truncated_rows();
    driver::say_truncated(&summary, &embedder);
    Ok(summary)
}

/// The Parquet sink's previous output, when there is one to carry rows over from.
async fn previous_output(
    pipeline: &Pipeline,
    ctx: &datafusion::prelude::SessionContext,
    shard: Option<Shard>,
) -> Result<Option<DataFrame>> {
    let SinkKind::Parquet(p) = pipeline.sink.kind()? else {
        return Ok(None);
    };
    let location = OutputLocation::for_parquet_part(&p.path, &pipeline.storage, shard)?;
    match location.store.head(&location.path).await {
        Ok(_) => {}
        Err(object_store::Error::NotFound { .. }) => {
            tracing::warn!(
                "the previous output {} is gone: every row is embedded again",
                location.display
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot read the previous output {}: {e}",
                location.display
            ));
        }
    }
    // The file as written (a relative path, or s3://...): object_store's form is encoded.
    if location.is_remote() {
        let remote = crate::storage::RemoteUrl::parse("sink.parquet.path", &p.path)?;
        ctx.register_object_store(&remote.store_url, Arc::clone(&location.store));
    }
    let url = location.display.clone();
    let df = ctx
        .read_parquet(url, ParquetReadOptions::default().file_extension(""))
        .await
        .with_context(|| format!("cannot read the previous output {}", location.display))?;
    Ok(Some(df))
}

/// Counts rows per status.
async fn count_statuses(rows: &DataFrame) -> Result<IncrementalCounts> {
    let batches = rows
        .clone()
        .aggregate(vec![ident(STATUS)], vec![count(lit(1)).alias("n")])?
        .collect()
        .await?;
    let mut c = IncrementalCounts::default();
    for b in batches {
        let status = cast(b.column(0), &DataType::Utf8)?;
        let status = status.as_string::<i32>();
        let n = cast(b.column(1), &DataType::UInt64)?;
        let n = n.as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        for i in 0..b.num_rows() {
            let v = n.value(i);
            match status.value(i) {
                NEW => c.new += v,
                CHANGED => c.changed += v,
                METADATA => c.metadata_only += v,
                UNCHANGED => c.unchanged += v,
                _ => {}
            }
        }
    }
    Ok(c)
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
fn without_hidden(schema: &Schema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !f.name().starts_with(HIDDEN))
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

async fn run_locked(
    pipeline: &Pipeline,
    spec: &IncrementalSpec,
    opts: &RunOptions,
    shutdown: &Shutdown,
    embedder: &Arc<Embedder>,
    settings: &EmbeddingSettings,
    state: &mut StateStore,
) -> Result<RunSummary> {
    let embed_fp = settings.fingerprint();
    let plan = plan::build_sharded(pipeline, Arc::clone(embedder), opts.shard).await?;
    if let Err(e) = shutdown.until(checks::check_ids(&plan.ids, pipeline)).await {
        return Err(driver::explain_scan_error(e, &plan, pipeline).await);
    }
    let before = state.previous.as_ref().and_then(|m| m.settings.clone());
    let same_settings = before.as_ref().is_none_or(|b| b.fingerprint() == embed_fp);
    if let Some(b) = &before
        && !same_settings
    {
        tracing::warn!(
            "the embedding settings changed since the last run ({}): every row is embedded again",
            settings.changes_since(b)
        );
    }
    let mut state_frame = state.frame(&plan.ctx).await?;
    let parquet = matches!(pipeline.sink.kind()?, SinkKind::Parquet(_));
    let chunked = pipeline.embed.chunking.is_some();
    let key = if chunked { "source_id" } else { "id" };
    let previous = if parquet && state_frame.is_some() && same_settings {
        let found = previous_output(pipeline, &plan.ctx, opts.shard).await?;
        if found.is_none() {
            state_frame = None;
        }
        found
    } else {
        None
    };
    if parquet && state_frame.is_some() && !same_settings && !spec.deletes {
        tracing::warn!(
            "rows of the previous output that are no longer in the source are not kept: they were embedded with other settings"
        );
    }
    let only = match pipeline.sink.kind()? {
        SinkKind::Pinecone(p) => Some(p.metadata.clone()),
        SinkKind::Parquet(_) => None,
    };
    let metadata =
        classify::metadata_columns(plan.source.schema().as_arrow(), pipeline, only.as_deref());
    let previous_keys = match &previous {
        Some(p) => Some(p.clone().select(vec![ident(key).alias("key")])?),
        None => None,
    };
    let classified = classify::classify(
        &plan.ctx,
        pipeline,
        plan.source.clone(),
        classify::Against {
            state: state_frame,
            previous_keys,
            embed_fp: &embed_fp,
            metadata: &metadata,
            deletes: spec.deletes,
        },
    )?;
    let mut counts = shutdown.until(count_statuses(&classified.rows)).await?;
    let vanished_rows = match &classified.vanished {
        Some(v) => v.clone().count().await? as u64,
        None => 0,
    };
    counts.deleted = vanished_rows;
    counts.state = state.display.clone();
    tracing::info!(
        "state {}: {} new, {} changed, {} metadata-only, {} unchanged, {} to delete",
        state.display,
        counts.new,
        counts.changed,
        counts.metadata_only,
        counts.unchanged,
        counts.deleted
    );

    let to_embed = plan::output_frame(
        classify::with_status(&classified.rows, &[NEW, CHANGED])?,
        pipeline,
        &plan.ctx,
    )?;
    let output = without_hidden(to_embed.schema().as_arrow());
    let mut sink = shutdown
        .until(driver::open_sink_for(
            pipeline,
            Arc::clone(&output),
            opts.shard,
        ))
        .await?;
    sink.track_confirmations();
    let as_it_goes = sink.confirms_as_it_goes();

    let mut phases: Vec<(Phase, DataFrame)> = Vec::new();
    if let Some(v) = classified.vanished.clone() {
        phases.push((Phase::Delete, v));
    }
    if !parquet {
        let mut cols = vec![ident(SOURCE_ID).alias("id")];
        cols.extend(metadata.iter().map(|m| ident(m.as_str())));
        for h in [classify::TEXT_FP, classify::META_FP, STATUS, OLD_CHUNKS] {
            cols.push(ident(h));
        }
        cols.push(ident(OLD_CHUNKS).alias(classify::CHUNKS));
        cols.push(ident(SOURCE_ID));
        let updates = classify::with_status(&classified.rows, &[METADATA])?.select(cols)?;
        phases.push((Phase::UpdateMetadata, updates));
    }
    phases.push((Phase::Embed, to_embed));
    if let Some(prev) = &previous {
        let from_previous: &[&str] = if chunked {
            &["id", "vector", "chunk", "text", "source_id"]
        } else {
            &["id", "vector"]
        };
        let carried = classify::carried_rows(
            classify::with_status(&classified.rows, &[METADATA, UNCHANGED])?,
            prev.clone(),
            &output,
            key,
            from_previous,
        )?;
        phases.push((Phase::Carry, carried));
        if !spec.deletes {
            let ids = classified.rows.clone().select(vec![ident(SOURCE_ID)])?;
            let orphans = classify::orphan_rows(prev.clone(), ids, &output, key)?;
            phases.push((Phase::Carry, orphans));
        }
    }

    let total = (!chunked && opts.progress).then_some(counts.new + counts.changed);
    let rt = driver::cpu_runtime()?;
    let mut runner = Runner {
        sink,
        output,
        tracker: Tracker::default(),
        state,
        embed_fp,
        delta: None,
        as_it_goes,
        checkpoint_every: Duration::from_secs(spec.checkpoint_secs),
        summary: RunSummary::default(),
        progress: Progress::new(total, opts.progress),
        embedder: Arc::clone(embedder),
        recorded: 0,
        last_checkpoint: Instant::now(),
    };
    let mut result = Ok(());
    for (phase, frame) in phases {
        result = runner.pump(&rt, frame, phase, shutdown.clone()).await;
        if result.is_err() {
            break;
        }
    }
    runner.progress.finish();
    // After a signal, `embed()` gives up at the next micro-batch: a short wait is enough.
    let _ = tokio::task::spawn_blocking(move || {
        rt.shutdown_timeout(crate::signals::plan_shutdown_wait())
    })
    .await;
    let mut summary = match result {
        Ok(()) => runner.finish().await?,
        Err(e) => {
            let e = runner.abort(e).await;
            return Err(driver::explain_scan_error(e, &plan, pipeline).await);
        }
    };
    state.compact(&plan.ctx, settings).await?;
    summary.incremental = Some(counts);
    Ok(summary)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// State rows whose id left the source: deleted from the sink.
    Delete,
    /// Rows whose metadata alone changed (Pinecone): updated in place.
    UpdateMetadata,
    /// New and changed rows: embedded and written.
    Embed,
    /// Rows of the previous Parquet output that stay: written again with their vectors.
    Carry,
}

struct Runner<'a> {
    sink: Box<dyn Sink>,
    output: SchemaRef,
    tracker: Tracker,
    state: &'a mut StateStore,
    embed_fp: String,
    /// Parquet: the run's one state file, published after the output.
    delta: Option<DeltaWriter>,
    as_it_goes: bool,
    checkpoint_every: Duration,
    summary: RunSummary,
    progress: Progress,
    embedder: Arc<Embedder>,
    /// Rows recorded in the state so far.
    recorded: u64,
    last_checkpoint: Instant,
}

impl Runner<'_> {
    async fn pump(
        &mut self,
        rt: &tokio::runtime::Runtime,
        frame: DataFrame,
        phase: Phase,
        mut shutdown: Shutdown,
    ) -> Result<()> {
        let mut rx = driver::spawn_plan(rt, frame);
        let mut ticks = tokio::time::interval(self.checkpoint_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            let item = tokio::select! {
                item = rx.recv() => item,
                _ = ticks.tick(), if self.as_it_goes => {
                    self.checkpoint().await?;
                    continue;
                }
                signal = shutdown.requested() => {
                    return Err(Interrupted { signal, outcome: String::new() }.into());
                }
            };
            let Some(item) = item else { break };
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
                    self.progress
                        .advance(self.summary.rows_read, self.embedder.tokens_seen());
                }
                Phase::Carry => self.write(&batch).await?,
            }
            let due = if self.as_it_goes {
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
                self.delta = Some(self.state.delta(&self.embed_fp)?);
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
        let rows = self.tracker.take_ready();
        if rows.is_empty() {
            return Ok(());
        }
        let mut delta = self.state.delta(&self.embed_fp)?;
        delta.write(&rows).await?;
        delta.publish().await?;
        self.recorded += rows.len() as u64;
        tracing::debug!("checkpoint: {} rows recorded in the state", rows.len());
        Ok(())
    }

    async fn finish(mut self) -> Result<RunSummary> {
        if self.as_it_goes {
            // Everything in flight lands (or goes to the dead-letter file) before the last
            // checkpoint.
            self.sink.flush().await?;
        }
        self.checkpoint().await?;
        let unconfirmed = self.tracker.unconfirmed();
        let delta = self.delta.take();
        let report = self.sink.finish().await?;
        // A Parquet run's state follows its output: published only once the output is.
        if let Some(d) = delta {
            d.publish().await?;
        }
        if unconfirmed > 0 {
            tracing::warn!(
                "{unconfirmed} rows were not confirmed by the sink: they are not in the state, and the next run embeds them again"
            );
        }
        let mut s = self.summary;
        s.record_sink(report);
        s.stream_seconds = self.progress.elapsed();
        Ok(s)
    }

    /// Stops: Pinecone keeps what it confirmed, and the state records it; a Parquet output and
    /// its state file are discarded.
    async fn abort(mut self, e: anyhow::Error) -> anyhow::Error {
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
