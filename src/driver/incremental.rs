//! An incremental run's job: opens and locks the state, classifies the source against it with
//! DataFusion joins ([`crate::incremental::classify`]), counts the classes and lays out the
//! phases the executor runs (delete, update metadata, embed, carry over); after the output,
//! [`IncrementalRun::complete`] publishes what the partitions checkpointed and compacts the state.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::count;
use datafusion::prelude::{DataFrame, ParquetReadOptions, ident, lit};

use crate::config::Pipeline;
use crate::driver::executor::Collector;
use crate::driver::writer::{Phase, without_hidden};
use crate::driver::{Job, RunOptions};
use crate::embed::Embedder;
use crate::embed::bm25::udf::SPARSE_COLUMN;
use crate::incremental::IncrementalSpec;
use crate::incremental::classify::{
    self, CHANGED, METADATA, NEW, OLD_CHUNKS, SOURCE_ID, STATUS, UNCHANGED,
};
use crate::incremental::state::{CheckpointTarget, SourceVersion, StateStore};
use crate::plan;
use crate::plan::change_feed::{self, ChangeFeed};
use crate::plan::fingerprint::EmbeddingSettings;
use crate::report::{FeedVersions, IncrementalCounts};
use crate::shard::Shard;
use crate::signals::Shutdown;
use crate::sink::SinkKind;
use crate::storage::OutputLocation;
use object_store::ObjectStoreExt;

/// Which sink a state describes: a state moved to another sink starts again.
fn sink_identity(pipeline: &Pipeline, shard: Option<Shard>) -> Result<String> {
    let shard_note = shard.map(|s| format!(" shard {s}")).unwrap_or_default();
    Ok(match pipeline.sink.kind()? {
        SinkKind::Parquet(p) if p.is_delta() => format!("delta {}", p.path),
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

/// An incremental run's own part of the job: its state, opened and locked for the run, and what
/// the classification counted. The driver runs the phases [`prepare`] returns, then
/// [`IncrementalRun::complete`] folds what the writers checkpointed into the state.
pub struct IncrementalRun {
    state: StateStore,
    settings: EmbeddingSettings,
    counts: IncrementalCounts,
    checkpoints: CheckpointTarget,
    /// The Delta table version this run brings the state to.
    source_version: Option<SourceVersion>,
}

/// Opens and locks the pipeline's state, classifies the source against it with DataFusion joins
/// (new / changed / metadata-only / unchanged / deleted), and returns the phases that bring the
/// output up to date: delete, metadata update, embed, carry. A source that is one Delta table
/// with its change data feed on is narrowed to the rows the feed names since the state's
/// version (`plan`'s source, frame and ids change). `staged`: the writers stage a Parquet
/// output's checkpoints for [`IncrementalRun::complete`] to publish after the output.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    pipeline: &Pipeline,
    spec: &IncrementalSpec,
    opts: &RunOptions,
    shutdown: &Shutdown,
    plan: &mut plan::PipelinePlan,
    embedder: Option<&Arc<Embedder>>,
    collect: &Collector,
    staged: bool,
) -> Result<(IncrementalRun, Job)> {
    let settings = match (embedder, &pipeline.embed.vector) {
        (_, Some(column)) => EmbeddingSettings::of_vectors(column),
        (None, None) => anyhow::bail!("an incremental pipeline that embeds needs its model"),
        (Some(embedder), None) => {
            let chunking = match &pipeline.embed.chunking {
                Some(c) => Some((c.max_tokens_for(embedder.max_seq_length())?, c.overlap)),
                None => None,
            };
            let e = Arc::clone(embedder);
            let mut settings =
                tokio::task::spawn_blocking(move || EmbeddingSettings::of(&e, chunking))
                    .await
                    .context("fingerprinting the model panicked")??;
            // embed.sparse: the BM25 settings the plan's bm25() was made with.
            if let Ok(udf) = datafusion::execution::FunctionRegistry::udf(&plan.ctx, "bm25")
                && let Some(bm25) = udf
                    .inner()
                    .as_ref()
                    .downcast_ref::<crate::embed::bm25::udf::Bm25Udf>()
            {
                settings.sparse = bm25.bm25().params().document_settings();
            }
            settings
        }
    };
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
    match plan_phases(
        pipeline, spec, opts, shutdown, plan, &settings, &mut state, collect, staged,
    )
    .await
    {
        Ok((job, counts, checkpoints)) => Ok((
            IncrementalRun {
                state,
                settings,
                counts,
                checkpoints,
                source_version: followed_version(pipeline, plan),
            },
            job,
        )),
        Err(e) => {
            state.release().await;
            Err(e)
        }
    }
}

impl IncrementalRun {
    /// After the output is published: records the writers' staged checkpoints, folds the
    /// checkpoints into the state's next generation, and returns the run's counts.
    pub async fn complete(
        &mut self,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Result<IncrementalCounts> {
        // A Parquet output's checkpoints (staged by a cluster's tasks) join the state once the
        // output they describe is published.
        self.state.publish_pending(&self.checkpoints).await?;
        self.state
            .compact(ctx, &self.settings, self.source_version.clone())
            .await?;
        Ok(self.counts.clone())
    }

    /// Releases the state's lock, whatever became of the run.
    pub async fn release(mut self) {
        self.state.release().await;
    }
}

/// The Parquet sink's previous output, when there is one to carry rows over from: the file of
/// a whole run or a shard, or every part in the output folder (a cluster job's).
async fn previous_output(
    pipeline: &Pipeline,
    ctx: &datafusion::prelude::SessionContext,
    shard: Option<Shard>,
) -> Result<Option<DataFrame>> {
    let SinkKind::Parquet(p) = pipeline.sink.kind()? else {
        return Ok(None);
    };
    if p.is_delta() {
        return previous_delta_output(p, &pipeline.storage, ctx).await;
    }
    let location = OutputLocation::for_parquet_part(&p.path, &pipeline.storage, shard)?;
    let folder_parts = shard.is_none() && !crate::storage::names_parquet_file(&p.path);
    let files: Vec<object_store::path::Path> = if folder_parts {
        let folder: object_store::path::Path = location
            .path
            .parts()
            .take(location.path.parts().count().saturating_sub(1))
            .collect();
        let listed = location
            .store
            .list_with_delimiter(Some(&folder))
            .await
            .with_context(|| format!("cannot list the previous output {}", p.path))?;
        let mut parts: Vec<_> = listed
            .objects
            .into_iter()
            .map(|o| o.location)
            .filter(|l| {
                l.filename()
                    .is_some_and(crate::sink::parquet::layout::is_part)
            })
            .collect();
        parts.sort();
        parts
    } else {
        match location.store.head(&location.path).await {
            Ok(_) => vec![location.path.clone()],
            Err(object_store::Error::NotFound { .. }) => Vec::new(),
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot read the previous output {}: {e}",
                    location.display
                ));
            }
        }
    };
    if files.is_empty() {
        tracing::warn!(
            "the previous output {} is gone: every row is embedded again",
            location.display
        );
        return Ok(None);
    }
    // Each file by its absolute URL (a cluster's tasks read them too).
    let urls: Vec<String> = if location.is_remote() {
        let remote = crate::storage::RemoteUrl::parse("sink.parquet.path", &p.path)?;
        ctx.register_object_store(&remote.store_url, Arc::clone(&location.store));
        files
            .iter()
            .map(|f| format!("s3://{}/{f}", remote.bucket))
            .collect()
    } else {
        files.iter().map(|f| format!("file:///{f}")).collect()
    };
    let df = ctx
        .read_parquet(urls, ParquetReadOptions::default().file_extension(""))
        .await
        .with_context(|| format!("cannot read the previous output {}", p.path))?;
    Ok(Some(df))
}

/// A Delta output's current version, as a table.
async fn previous_delta_output(
    p: &crate::sink::parquet::config::ParquetSinkSpec,
    storage: &crate::storage::StorageSpec,
    ctx: &datafusion::prelude::SessionContext,
) -> Result<Option<DataFrame>> {
    let table = crate::storage::delta::for_write("sink.parquet.path", &p.path, storage).await?;
    if table.version().is_none() {
        tracing::warn!(
            "the previous output {} is gone: every row is embedded again",
            p.path
        );
        return Ok(None);
    }
    let provider =
        crate::storage::delta::provider("the previous output", &p.path, &table, ctx).await?;
    Ok(Some(ctx.read_table(provider)?))
}

/// Counts rows per status.
async fn count_statuses(rows: &DataFrame, collect: &Collector) -> Result<IncrementalCounts> {
    let batches = collect(
        rows.clone()
            .aggregate(vec![ident(STATUS)], vec![count(lit(1)).alias("n")])?,
    )
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

/// The number of rows of `frame`.
async fn count_rows(frame: &DataFrame, collect: &Collector) -> Result<u64> {
    let batches = collect(
        frame
            .clone()
            .aggregate(vec![], vec![count(lit(1)).alias("n")])?,
    )
    .await?;
    let mut total = 0;
    for b in batches {
        let n = cast(b.column(0), &DataType::UInt64)?;
        total += n
            .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
            .values()
            .iter()
            .sum::<u64>();
    }
    Ok(total)
}

/// Classifies the source against the state and lays out the phases.
#[allow(clippy::too_many_arguments)]
async fn plan_phases(
    pipeline: &Pipeline,
    spec: &IncrementalSpec,
    opts: &RunOptions,
    shutdown: &Shutdown,
    plan: &mut plan::PipelinePlan,
    settings: &EmbeddingSettings,
    state: &mut StateStore,
    collect: &Collector,
    staged: bool,
) -> Result<(Job, IncrementalCounts, CheckpointTarget)> {
    let embed_fp = settings.fingerprint();
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
    let feed = follow_change_feed(
        pipeline,
        opts,
        plan,
        state,
        state_frame.is_some() && same_settings,
    )
    .await?;
    // A feed that names few ids: the state and the previous output are filtered by their list
    // while streamed, rather than sorted whole for a join with them.
    let named = match &feed {
        Some(f) => shutdown.until(named_list(f, collect)).await?,
        None => None,
    };
    let only_named = |frame: DataFrame, column: &str| -> Result<DataFrame> {
        match &named {
            Some(list) => Ok(frame.filter(
                datafusion::prelude::cast(ident(column), DataType::Utf8)
                    .in_list(list.clone(), false),
            )?),
            None => Ok(frame),
        }
    };
    let state_frame = match state_frame {
        Some(f) if named.is_some() => Some(only_named(f, "id")?),
        other => other,
    };
    let state_ids = match (&feed, &state_frame) {
        (Some(_), Some(f)) if spec.deletes => Some(f.clone()),
        _ => None,
    };
    let only = match pipeline.sink.kind()? {
        SinkKind::Pinecone(p) => Some(p.metadata.clone()),
        SinkKind::Parquet(_) => None,
    };
    let metadata = classify::metadata_columns(
        plan.source.schema().as_arrow(),
        &pipeline.embed,
        only.as_deref(),
    );
    let previous_keys = match &previous {
        Some(p) => Some(only_named(p.clone(), key)?.select(vec![ident(key).alias("key")])?),
        None => None,
    };
    let mut classified = classify::classify(
        &plan.ctx,
        &pipeline.embed,
        plan.source.clone(),
        classify::Against {
            state: state_frame,
            previous_keys,
            embed_fp: &embed_fp,
            metadata: &metadata,
            // With a change feed, the ids gone are the ones it says were deleted.
            deletes: spec.deletes && feed.is_none(),
        },
    )?;
    if let (Some(feed), Some(state_ids)) = (&feed, state_ids) {
        classified.vanished = Some(deleted_in_state(state_ids, feed)?);
    }
    let mut counts = shutdown
        .until(count_statuses(&classified.rows, collect))
        .await?;
    counts.deleted = match &classified.vanished {
        Some(v) => shutdown.until(count_rows(v, collect)).await?,
        None => 0,
    };
    counts.state = state.display.clone();
    counts.change_feed = feed.as_ref().map(|f| FeedVersions {
        table: f.table.clone(),
        since: f.since,
        to: f.to,
    });
    tracing::info!(
        "state {}: {} new, {} changed, {} metadata-only, {} unchanged, {} to delete",
        state.display,
        counts.new,
        counts.changed,
        counts.metadata_only,
        counts.unchanged,
        counts.deleted
    );

    let fresh = classify::with_status(&classified.rows, &[NEW, CHANGED])?;
    let to_embed = match pipeline.embed.vector {
        Some(_) => plan::vector_frame(fresh, &pipeline.embed)?,
        None => plan::output_frame(fresh, &pipeline.embed, &plan.ctx)?,
    };
    let output = without_hidden(to_embed.schema().as_arrow());

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
        let mut from_previous: Vec<&str> = if chunked {
            vec!["id", "vector", "chunk", "text", "source_id"]
        } else {
            vec!["id", "vector"]
        };
        // embed.sparse: a carried row keeps its sparse vector as it keeps its dense one.
        if output.field_with_name(SPARSE_COLUMN).is_ok() {
            from_previous.push(SPARSE_COLUMN);
        }
        let carried = classify::carried_rows(
            classify::with_status(&classified.rows, &[METADATA, UNCHANGED])?,
            only_named(prev.clone(), key)?,
            &output,
            key,
            &from_previous,
        )?;
        phases.push((Phase::Carry, carried));
        // The previous output's rows the source no longer names: kept unless deleted. With a
        // change feed, every row it does not name is kept as it was.
        let others = match (&feed, spec.deletes) {
            (_, false) => Some(classified.rows.clone().select(vec![ident(SOURCE_ID)])?),
            (Some(feed), true) => Some(feed.named.clone()),
            (None, true) => None,
        };
        match (&named, spec.deletes) {
            (Some(list), true) => {
                let kept = prev.clone().filter(
                    datafusion::prelude::cast(ident(key), DataType::Utf8)
                        .in_list(list.clone(), true),
                )?;
                phases.push((Phase::Carry, classify::previous_rows(kept, &output)?));
            }
            _ => {
                if let Some(ids) = others {
                    let orphans = classify::orphan_rows(prev.clone(), ids, &output, key)?;
                    phases.push((Phase::Carry, orphans));
                }
            }
        }
    }

    // A bulk import's checkpoints wait for the import, as a cluster's for its Parquet output.
    let imports = matches!(pipeline.sink.kind()?, SinkKind::Pinecone(p) if p.import.is_some());
    let checkpoints = state.checkpoints(&embed_fp, (parquet && staged) || imports);
    let job = Job {
        phases,
        output,
        checkpoints: Some(checkpoints.clone()),
        checkpoint_every: Duration::from_secs(spec.checkpoint_secs),
        to_embed: (!chunked && opts.progress).then_some(counts.new + counts.changed),
    };
    Ok((job, counts, checkpoints))
}

/// The Delta table version an incremental run records in its state: that of its one Delta
/// source table, when its change feed can take the next run from there.
fn followed_version(pipeline: &Pipeline, plan: &plan::PipelinePlan) -> Option<SourceVersion> {
    change_feed::candidate(&pipeline.source, &plan.delta)
        .ok()
        .map(|read| SourceVersion {
            table: read.path.clone(),
            version: read.version,
        })
}

/// Narrows `plan` to the rows a Delta table's change feed names since the version the state
/// recorded, when the source is one such table and the state can be built on (`usable`: it
/// holds rows embedded with this run's settings); says why the whole table is read otherwise.
async fn follow_change_feed(
    pipeline: &Pipeline,
    opts: &RunOptions,
    plan: &mut plan::PipelinePlan,
    state: &StateStore,
    usable: bool,
) -> Result<Option<ChangeFeed>> {
    let read = match change_feed::candidate(&pipeline.source, &plan.delta) {
        Ok(read) => read.clone(),
        Err(why) => {
            if !why.is_empty() {
                tracing::info!("every source row is fingerprinted: {why}");
            }
            return Ok(None);
        }
    };
    if opts.full || !usable {
        return Ok(None);
    }
    let name = &read.name;
    let since = match state
        .previous
        .as_ref()
        .and_then(|m| m.source_version.clone())
    {
        None => {
            tracing::info!(
                "table `{name}`: the state records no Delta version yet: every row is fingerprinted this time, the change feed is read from the next run on"
            );
            return Ok(None);
        }
        Some(v) if v.table != read.path => {
            tracing::info!(
                "table `{name}`: the state recorded another table ({}): every row is fingerprinted",
                v.table
            );
            return Ok(None);
        }
        Some(v) if v.version > read.version => {
            tracing::warn!(
                "table `{name}`: reading version {} but the state is at version {}: every row is fingerprinted",
                read.version,
                v.version
            );
            return Ok(None);
        }
        Some(v) => v.version,
    };
    let feed = match change_feed::read(&plan.ctx, &read, since, &pipeline.embed, &pipeline.storage)
        .await
    {
        // Planning the scan reads the log: a feed that cannot be read is found here.
        Ok(feed) => match feed.named.clone().create_physical_plan().await {
            Ok(_) => feed,
            Err(e) => {
                tracing::warn!(
                    "table `{name}`: cannot read the change feed after version {since} ({}): every row is fingerprinted instead",
                    crate::error::describe(&anyhow::Error::from(e))
                );
                return Ok(None);
            }
        },
        Err(e) => {
            tracing::warn!(
                "table `{name}`: cannot read the change feed after version {since} ({}): every row is fingerprinted instead",
                crate::error::describe(&e)
            );
            return Ok(None);
        }
    };
    tracing::info!(
        "table `{name}`: reading its change data feed, versions {} to {}, instead of the whole table",
        since + 1,
        read.version
    );
    plan.narrow(feed.rows.clone(), &pipeline.embed, opts.shard)?;
    Ok(Some(feed))
}

/// Ids a feed may name for a run to filter by their list rather than join with them.
const NAMED_LIST_MAX: usize = 100_000;

/// The ids a change feed names, as literals, when there are at most [`NAMED_LIST_MAX`].
async fn named_list(
    feed: &ChangeFeed,
    collect: &Collector,
) -> Result<Option<Vec<datafusion::prelude::Expr>>> {
    if count_rows(&feed.named, collect).await? > NAMED_LIST_MAX as u64 {
        return Ok(None);
    }
    let batches = collect(feed.named.clone()).await?;
    let mut ids = Vec::new();
    for b in batches {
        let column = cast(b.column(0), &DataType::Utf8)?;
        let column = column.as_string::<i32>();
        ids.extend((0..b.num_rows()).map(|i| lit(column.value(i).to_string())));
    }
    Ok(Some(ids))
}

/// State rows (`id`, `chunks`) of the ids a change feed says were deleted.
fn deleted_in_state(state: DataFrame, feed: &ChangeFeed) -> Result<DataFrame> {
    use datafusion::common::JoinType;
    use datafusion::prelude::{cast, col};
    let state = state.select(vec![
        cast(col("id"), DataType::Utf8).alias("__ef_gone_id"),
        col("chunks").alias("__ef_gone_chunks"),
    ])?;
    Ok(state
        .join(
            feed.deleted.clone(),
            JoinType::LeftSemi,
            &["__ef_gone_id"],
            &[SOURCE_ID],
            None,
        )?
        .select(vec![
            ident("__ef_gone_id").alias("id"),
            ident("__ef_gone_chunks").alias("chunks"),
        ])?)
}

/// An incremental pipeline with `sink.pinecone.import`: the import loads the first run (the
/// backfill, into a new namespace); once the state records rows, and with `--full`, runs upsert
/// what changed. `Some`: the pipeline this run uses instead (without the import).
pub async fn import_or_upsert(pipeline: &Pipeline, opts: &RunOptions) -> Result<Option<Pipeline>> {
    let (Some(spec), Some(sink)) = (&pipeline.incremental, &pipeline.sink.pinecone) else {
        return Ok(None);
    };
    let Some(import) = &sink.import else {
        return Ok(None);
    };
    if !import.wait {
        return Err(crate::error::config_error(
            "sink.pinecone.import.wait: false with incremental: the state can record the rows only once the import has completed; set wait: true (an Airflow task can still run the import alone with `embedflow run`, then the incremental runs after it)",
        ));
    }
    let state_has_rows = StateStore::holds_rows(spec, &pipeline.storage).await?;
    if !opts.full && !state_has_rows {
        return Ok(None);
    }
    tracing::info!(
        "{}: this run upserts what changed; the bulk import is for the first run into a new namespace",
        if opts.full {
            "--full"
        } else {
            "the incremental state records rows"
        }
    );
    let mut upserting = pipeline.clone();
    if let Some(p) = upserting.sink.pinecone.as_mut() {
        p.import = None;
    }
    Ok(Some(upserting))
}

/// Records in the state what the run that started a now completed bulk import embedded (its
/// staged checkpoints).
pub async fn adopt_imported(pipeline: &Pipeline, spec: &IncrementalSpec) -> Result<()> {
    let sink_id = sink_identity(pipeline, None)?;
    let adopted = StateStore::adopt_pending(spec, &pipeline.storage, &sink_id).await?;
    tracing::info!(
        "the state {} records the imported rows ({adopted} checkpoint files)",
        spec.state
    );
    Ok(())
}
