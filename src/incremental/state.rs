//! The incremental state: per source id, the fingerprints of what the sink holds.
//!
//! A folder (local or `s3://`) of Parquet files and one `manifest.json`:
//! - `base-<generation>.parquet`: the state as of the last run that finished;
//! - `delta-<generation>-<seq>.parquet`: checkpoints written since, each one object written at
//!   once (a PUT, or a temporary file renamed), holding the rows the sink confirmed since the
//!   previous checkpoint, deletions as tombstones;
//! - `manifest.json`: the current generation, its base, which sink the state describes and the
//!   embedding settings of the base.
//!
//! The state is the base plus the deltas of its generation, the latest row per id winning. A
//! run that finishes folds them into the next generation's base (written before the manifest
//! that names it, so a crash at any moment leaves a readable state), then removes the old files.
//! A `lock` object (create-only put) keeps two runs from writing one state at once.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::{Compression, ZstdLevel};
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::prelude::{DataFrame, ParquetReadOptions, SessionContext};
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};

use super::config::IncrementalSpec;
use crate::plan::fingerprint::EmbeddingSettings;
use crate::storage::lock::OutputLock;
use crate::storage::{self, RemoteUrl, StorageSpec};

const MANIFEST: &str = "manifest.json";
const LOCK: &str = "lock";
const FORMAT: u32 = 1;

/// One row of the state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRow {
    pub id: String,
    pub text_fp: String,
    pub meta_fp: String,
    /// 0: one vector whose id is the source id; n: vectors `<id>#0` to `<id>#<n-1>`.
    pub chunks: i32,
    pub deleted: bool,
}

impl StateRow {
    /// The vector ids this row stands for in the sink.
    pub fn vector_ids(id: &str, chunks: i32) -> Vec<String> {
        if chunks <= 0 {
            vec![id.to_string()]
        } else {
            (0..chunks).map(|n| format!("{id}#{n}")).collect()
        }
    }
}

/// The Arrow schema of state files.
pub fn state_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text_fp", DataType::Utf8, false),
        Field::new("meta_fp", DataType::Utf8, false),
        Field::new("embed_fp", DataType::Utf8, false),
        Field::new("chunks", DataType::Int32, false),
        Field::new("deleted", DataType::Boolean, false),
        Field::new("seq", DataType::UInt64, false),
    ]))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub generation: u64,
    /// The base file of this generation (none before the first run finished).
    #[serde(default)]
    pub base: Option<String>,
    /// The sink the state describes (`parquet <path>`, `pinecone <index>/<namespace>`).
    pub sink: String,
    /// The embedding settings of the base.
    #[serde(default)]
    pub settings: Option<EmbeddingSettings>,
    /// The Delta table version the base reflects, when the pipeline reads one Delta table: the
    /// next run reads that table's change feed from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_version: Option<SourceVersion>,
}

/// A Delta source table (its path) at a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceVersion {
    pub table: String,
    pub version: u64,
}

/// Where a state lives: its folder in an object store, and the forms its name takes.
struct StateDir {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    /// The folder as a URL DataFusion reads (`file:///...` or `s3://bucket/...`), ending in `/`.
    url: String,
    /// `s3://bucket` for remote states, to register the store with a session.
    store_url: Option<url::Url>,
    local_dir: Option<std::path::PathBuf>,
    display: String,
}

impl StateDir {
    /// The state folder `path` (local or `s3://`); a local one is created when `create`.
    fn locate(path: &str, storage: &StorageSpec, create: bool) -> Result<StateDir> {
        if storage::is_remote(path) {
            let remote = RemoteUrl::parse("incremental.state", path)?;
            let store = storage::s3_store(path, &remote.bucket, storage.s3.as_ref())?;
            let key = remote.key.trim_matches('/').to_string();
            let url = format!(
                "s3://{}/{}",
                remote.bucket,
                if key.is_empty() {
                    String::new()
                } else {
                    format!("{key}/")
                }
            );
            return Ok(StateDir {
                store,
                dir: Path::from(key.as_str()),
                display: url.trim_end_matches('/').to_string(),
                url,
                store_url: Some(remote.store_url.clone()),
                local_dir: None,
            });
        }
        let local = path.strip_prefix("file://").unwrap_or(path);
        let absolute =
            std::path::absolute(local).map_err(|e| anyhow!("incremental.state {path}: {e}"))?;
        if create {
            std::fs::create_dir_all(&absolute).map_err(|e| {
                anyhow!(
                    "incremental.state: cannot create {}: {e}",
                    absolute.display()
                )
            })?;
        }
        let dir = Path::from_absolute_path(&absolute)
            .map_err(|e| anyhow!("incremental.state {path}: {e}"))?;
        let url = url::Url::from_directory_path(&absolute)
            .map_err(|()| anyhow!("incremental.state {path}: not an absolute path"))?
            .to_string();
        Ok(StateDir {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            dir,
            url,
            store_url: None,
            local_dir: Some(absolute),
            display: local.to_string(),
        })
    }
}

/// An opened, locked state folder.
pub struct StateStore {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    /// The folder as a URL DataFusion reads (`file:///...` or `s3://bucket/...`), ending in `/`.
    url: String,
    /// `s3://bucket` for remote states, to register the store with a session.
    store_url: Option<url::Url>,
    local_dir: Option<std::path::PathBuf>,
    pub display: String,
    lock: Option<OutputLock>,
    storage: StorageSpec,
    pub manifest: Manifest,
    /// The manifest as found, when there was one (`None` for a first or `--full` run).
    pub previous: Option<Manifest>,
    next_seq: u64,
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl StateStore {
    /// True when the state at `spec` records rows (a run finished or checkpointed into it);
    /// false for a state not made yet, or one whose only files are staged checkpoints.
    pub async fn holds_rows(spec: &IncrementalSpec, storage: &StorageSpec) -> Result<bool> {
        let dir = StateDir::locate(&spec.state, storage, false)?;
        if dir.local_dir.as_ref().is_some_and(|d| !d.is_dir()) {
            return Ok(false);
        }
        let listed = dir
            .store
            .list_with_delimiter(Some(&dir.dir))
            .await
            .with_context(|| format!("cannot list the state {}", dir.display))?;
        Ok(listed.objects.iter().any(|o| {
            o.location
                .filename()
                .is_some_and(|n| n.starts_with("base-") || n.starts_with("delta-"))
        }))
    }

    /// Opens (creating if need be) and locks the state folder. With `full`, or when the state
    /// belongs to another sink, a new, empty generation starts.
    pub async fn open(
        spec: &IncrementalSpec,
        storage: &StorageSpec,
        sink: &str,
        full: bool,
    ) -> Result<StateStore> {
        Self::open_with(spec, storage, sink, full, false).await
    }

    /// Opens and locks the state to record the checkpoints an earlier run staged for a bulk
    /// import that has now completed: every `pending-…` file of its generation joins the state.
    /// Returns how many files did.
    pub async fn adopt_pending(
        spec: &IncrementalSpec,
        storage: &StorageSpec,
        sink: &str,
    ) -> Result<usize> {
        let mut state = Self::open_with(spec, storage, sink, false, true).await?;
        let adopted = state.publish_all_pending().await;
        state.release().await;
        adopted
    }

    async fn publish_all_pending(&self) -> Result<usize> {
        let prefix = format!("pending-{:08}-", self.manifest.generation);
        let mut n = 0;
        for name in self.names().await? {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let target = format!("delta-{:08}-{rest}", self.manifest.generation);
            self.store
                .rename(&self.file(&name), &self.file(&target))
                .await
                .with_context(|| format!("cannot record the checkpoint {}/{name}", self.display))?;
            n += 1;
        }
        Ok(n)
    }

    async fn open_with(
        spec: &IncrementalSpec,
        storage: &StorageSpec,
        sink: &str,
        full: bool,
        keep_pending: bool,
    ) -> Result<StateStore> {
        let StateDir {
            store,
            dir,
            url,
            store_url,
            local_dir,
            display,
        } = StateDir::locate(&spec.state, storage, true)?;
        let lock = OutputLock::acquire(
            Arc::clone(&store),
            dir.clone().join(LOCK),
            format!("{display}/{LOCK}"),
        )
        .await
        .map_err(|e| e.context(format!("incremental state {display}")))?;
        let mut state = StateStore {
            store,
            dir,
            url,
            store_url,
            local_dir,
            display,
            lock: Some(lock),
            storage: storage.clone(),
            manifest: Manifest {
                format: FORMAT,
                generation: 0,
                base: None,
                sink: sink.to_string(),
                settings: None,
                source_version: None,
            },
            previous: None,
            next_seq: 0,
        };
        if let Err(e) = state.read(sink, full, keep_pending).await {
            state.release().await;
            return Err(e);
        }
        Ok(state)
    }

    async fn read(&mut self, sink: &str, full: bool, keep_pending: bool) -> Result<()> {
        let found = match self.store.get(&self.file(MANIFEST)).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                match serde_json::from_slice::<Manifest>(&bytes) {
                    Ok(m) if m.format == FORMAT => Some(m),
                    Ok(m) if !full => bail!(
                        "state {}: format {} is not one this embedflow reads ({FORMAT}); re-run with --full to start it again",
                        self.display,
                        m.format
                    ),
                    Err(e) if !full => bail!(
                        "state {}/{MANIFEST} is unreadable ({e}); re-run with --full to start the state again",
                        self.display
                    ),
                    _ => None,
                }
            }
            Err(e) if is_not_found(&e) => None,
            Err(e) => {
                return Err(anyhow!(
                    "cannot read the state {}/{MANIFEST}: {e}",
                    self.display
                ));
            }
        };
        if found.is_none() {
            self.remove_unnamed().await?;
        }
        self.remove_leftovers(found.as_ref(), keep_pending).await;
        let generation = found.as_ref().map(|m| m.generation + 1).unwrap_or(0);
        match found {
            Some(_) if full => {
                tracing::info!(
                    "--full: the state {} is ignored and written again from this run",
                    self.display
                );
                self.start_generation(generation, sink).await
            }
            Some(m) if m.sink != sink => {
                tracing::warn!(
                    "the state {} describes {}, but this pipeline writes to {sink}: every row is embedded again and the state starts again",
                    self.display,
                    m.sink
                );
                self.start_generation(generation, sink).await
            }
            Some(m) => {
                self.next_seq = self
                    .deltas(m.generation)
                    .await?
                    .last()
                    .map(|(s, _)| s + 1)
                    .unwrap_or(0);
                self.manifest = m.clone();
                self.previous = Some(m);
                Ok(())
            }
            None => self.start_generation(generation, sink).await,
        }
    }

    /// A new, empty generation, recorded before anything is checkpointed into it.
    async fn start_generation(&mut self, generation: u64, sink: &str) -> Result<()> {
        self.manifest = Manifest {
            format: FORMAT,
            generation,
            base: None,
            sink: sink.to_string(),
            settings: None,
            source_version: None,
        };
        self.next_seq = 0;
        self.write_manifest().await
    }

    async fn write_manifest(&self) -> Result<()> {
        let body = serde_json::to_vec_pretty(&self.manifest)?;
        self.store
            .put(&self.file(MANIFEST), body.into())
            .await
            .with_context(|| format!("cannot write the state {}/{MANIFEST}", self.display))?;
        Ok(())
    }

    fn file(&self, name: &str) -> Path {
        self.dir.clone().join(name)
    }

    fn base_name(generation: u64) -> String {
        format!("base-{generation:08}.parquet")
    }

    /// The file names in the folder.
    async fn names(&self) -> Result<Vec<String>> {
        let listed: Vec<_> = self
            .store
            .list(Some(&self.dir))
            .try_collect()
            .await
            .with_context(|| format!("cannot list the state {}", self.display))?;
        Ok(listed
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect())
    }

    /// This generation's deltas, by sequence number.
    async fn deltas(&self, generation: u64) -> Result<Vec<(u64, String)>> {
        let prefix = format!("delta-{generation:08}-");
        let mut out: Vec<(u64, String)> = self
            .names()
            .await?
            .into_iter()
            .filter_map(|n| {
                let seq = delta_seq(n.strip_prefix(&prefix)?)?;
                Some((seq, n))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Makes the checkpoints a run's tasks staged (`pending-…`, a Parquet output's) part of the
    /// state, once the output they describe is published.
    pub async fn publish_pending(&self, checkpoints: &CheckpointTarget) -> Result<()> {
        if !checkpoints.staged {
            return Ok(());
        }
        let prefix = format!(
            "pending-{:08}-{:08}-",
            checkpoints.generation, checkpoints.seq
        );
        for name in self.names().await? {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let target = format!(
                "delta-{:08}-{:08}-{rest}",
                checkpoints.generation, checkpoints.seq
            );
            self.store
                .rename(&self.file(&name), &self.file(&target))
                .await
                .with_context(|| format!("cannot record the checkpoint {}/{name}", self.display))?;
        }
        Ok(())
    }

    /// Without a manifest, state files in the folder belong to no state (a deleted or lost
    /// `manifest.json`): says so, naming them, and removes them, since the state starts again
    /// and an old delta would otherwise be read as part of the new generation.
    async fn remove_unnamed(&self) -> Result<()> {
        let orphans: Vec<String> = self
            .names()
            .await?
            .into_iter()
            .filter(|n| {
                (n.starts_with("base-") || n.starts_with("delta-")) && n.ends_with(".parquet")
            })
            .collect();
        if orphans.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            "the state {} has no {MANIFEST} but holds {} state files that no manifest names ({}{}): the state starts again (every row is embedded), and those files are removed",
            self.display,
            orphans.len(),
            orphans
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
            if orphans.len() > 3 { ", ..." } else { "" }
        );
        for name in orphans {
            self.store
                .delete(&self.file(&name))
                .await
                .with_context(|| {
                    format!("cannot remove the old state file {}/{name}", self.display)
                })?;
        }
        Ok(())
    }

    /// Removes what a killed run or an earlier generation left: files of other generations and
    /// local staging files (`<name>#<n>`). Only the lock's holder calls this.
    async fn remove_leftovers(&self, current: Option<&Manifest>, keep_pending: bool) {
        if let Some(dir) = &self.local_dir
            && let Ok(entries) = std::fs::read_dir(dir)
        {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if (name.starts_with("delta-") || name.starts_with("base-"))
                    && name.contains(".parquet#")
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        let Ok(names) = self.names().await else {
            return;
        };
        // Checkpoints staged by the tasks of a job that never published its output (or for an
        // import that failed).
        if !keep_pending {
            for name in names.iter().filter(|n| n.starts_with("pending-")) {
                let _ = self.store.delete(&self.file(name)).await;
            }
        }
        let Some(m) = current else { return };
        let keep_delta = format!("delta-{:08}-", m.generation);
        for name in names {
            let old_base = name.starts_with("base-") && Some(&name) != m.base.as_ref();
            let old_delta = name.starts_with("delta-") && !name.starts_with(&keep_delta);
            let staged = name.starts_with("pending-");
            if (old_base || old_delta)
                && !staged
                && let Err(e) = self.store.delete(&self.file(&name)).await
            {
                tracing::warn!(
                    "cannot remove the old state file {}/{name}: {e}",
                    self.display
                );
            }
        }
    }

    /// Reads a state file's Parquet footer, so that a damaged file (truncated, overwritten) is
    /// named with the way out before the run plans over it, rather than failing mid-scan with
    /// a footer error that names no file.
    async fn check_readable(&self, name: &str) -> Result<()> {
        match storage::parquet_footer(&self.store, &self.file(name)).await {
            Ok(_) => Ok(()),
            Err(e) => bail!(
                "the state file {}/{name} is unreadable ({}); the state is damaged: re-run with --full to embed every row again and write the state anew",
                self.display,
                crate::error::describe(&e)
            ),
        }
    }

    /// The state as a table: one row per id (the latest), without deletions. `None` when the
    /// state holds nothing yet.
    pub async fn frame(&self, ctx: &SessionContext) -> Result<Option<DataFrame>> {
        let mut files: Vec<String> = self.manifest.base.iter().cloned().collect();
        let deltas = self.deltas(self.manifest.generation).await?;
        let has_deltas = !deltas.is_empty();
        files.extend(deltas.into_iter().map(|(_, n)| n));
        if files.is_empty() {
            return Ok(None);
        }
        for name in &files {
            self.check_readable(name).await?;
        }
        if let Some(u) = &self.store_url {
            ctx.register_object_store(u, Arc::clone(&self.store));
        }
        let urls: Vec<String> = files.iter().map(|f| format!("{}{f}", self.url)).collect();
        let schema = state_schema();
        let df = ctx
            .read_parquet(urls, ParquetReadOptions::default().schema(&schema))
            .await
            .with_context(|| format!("cannot read the state {}", self.display))?;
        if !has_deltas {
            return Ok(Some(df.filter(datafusion::logical_expr::not(
                datafusion::prelude::col("deleted"),
            ))?));
        }
        // The latest row of each id wins.
        use datafusion::functions_window::expr_fn::row_number;
        use datafusion::logical_expr::ExprFunctionExt;
        use datafusion::prelude::{col, lit};
        let rn = row_number()
            .partition_by(vec![col("id")])
            .order_by(vec![col("seq").sort(false, false)])
            .build()?;
        let cols: Vec<_> = schema.fields().iter().map(|f| col(f.name())).collect();
        let latest = df
            .with_column("__ef_rn", rn)?
            .filter(
                col("__ef_rn")
                    .eq(lit(1u64))
                    .and(datafusion::logical_expr::not(col("deleted"))),
            )?
            .select(cols)?;
        Ok(Some(latest))
    }

    /// Where this run's checkpoints go: files of the next sequence number, which every writer
    /// of the run (this process, or each task of a cluster job) shares. `staged`: the files are
    /// written as `pending-…` and join the state only by [`StateStore::publish_pending`].
    pub fn checkpoints(&mut self, embed_fp: &str, staged: bool) -> CheckpointTarget {
        let seq = self.next_seq;
        self.next_seq += 1;
        CheckpointTarget {
            state: self.local_dir.as_ref().map_or_else(
                || self.url.trim_end_matches('/').to_string(),
                |d| d.display().to_string(),
            ),
            storage: self.storage.clone(),
            generation: self.manifest.generation,
            seq,
            embed_fp: embed_fp.to_string(),
            staged,
        }
    }

    /// Folds the deltas into the next generation's base, then records it in the manifest and
    /// removes the old files.
    pub async fn compact(
        &mut self,
        ctx: &SessionContext,
        settings: &EmbeddingSettings,
        source_version: Option<SourceVersion>,
    ) -> Result<()> {
        let deltas = self.deltas(self.manifest.generation).await?;
        if deltas.is_empty()
            && self.manifest.settings.as_ref() == Some(settings)
            && self.manifest.source_version == source_version
        {
            return Ok(());
        }
        let generation = self.manifest.generation + 1;
        let name = Self::base_name(generation);
        let display = format!("{}/{name}", self.display);
        let mut writer = parquet_writer(Arc::clone(&self.store), self.file(&name), &display)?;
        if let Some(frame) = self.frame(ctx).await? {
            let mut stream = frame.execute_stream().await?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let batch = RecordBatch::try_new(state_schema(), batch.columns().to_vec())?;
                writer
                    .write(&batch)
                    .await
                    .with_context(|| format!("cannot write {display}"))?;
            }
        }
        writer
            .close()
            .await
            .with_context(|| format!("cannot write {display}"))?;
        let old_base = self.manifest.base.replace(name);
        self.manifest.generation = generation;
        self.manifest.settings = Some(settings.clone());
        self.manifest.source_version = source_version;
        self.write_manifest().await?;
        self.next_seq = 0;
        let mut old: Vec<String> = deltas.into_iter().map(|(_, n)| n).collect();
        old.extend(old_base);
        for n in old {
            if let Err(e) = self.store.delete(&self.file(&n)).await {
                tracing::warn!("cannot remove the old state file {}/{n}: {e}", self.display);
            }
        }
        Ok(())
    }

    /// Releases the lock.
    pub async fn release(&mut self) {
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
    }
}

/// The sequence number at the start of a delta's name after `delta-<generation>-`
/// (`00000003.parquet`, or `00000003-<writer>-<n>.parquet`).
fn delta_seq(rest: &str) -> Option<u64> {
    let end = rest.find(['-', '.'])?;
    rest[..end].parse().ok()
}

/// Where a run's checkpoints go, in a form that travels to a cluster's tasks: the state folder
/// (its path and storage settings, never credentials), the generation and sequence number the
/// run writes, and the embedding settings its rows were embedded with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointTarget {
    /// The state folder: an absolute local path, or `s3://bucket/prefix`.
    pub state: String,
    pub storage: StorageSpec,
    pub generation: u64,
    pub seq: u64,
    pub embed_fp: String,
    /// Written as `pending-…` (a Parquet output's checkpoints, recorded only once it is
    /// published), rather than as `delta-…`.
    pub staged: bool,
}

impl CheckpointTarget {
    /// The checkpoints of one writer (`local`, or a task's name): its files are numbered from 0.
    pub fn writer(&self, name: &str) -> Result<Checkpoints> {
        let dir = StateDir::locate(&self.state, &self.storage, false)?;
        // The driver made the folder: missing here, it is not shared with this process (a
        // cluster executor on another machine), and a checkpoint written here would be lost.
        if let Some(local) = &dir.local_dir
            && !local.is_dir()
        {
            bail!(
                "the incremental state folder {} is not on this machine: on a cluster, put incremental.state on storage every executor shares (s3://, or a shared folder)",
                local.display()
            );
        }
        Ok(Checkpoints {
            target: self.clone(),
            dir,
            name: name.to_string(),
            next: 0,
        })
    }
}

/// One writer's checkpoint files.
pub struct Checkpoints {
    target: CheckpointTarget,
    dir: StateDir,
    name: String,
    next: u64,
}

impl Checkpoints {
    /// A writer for the next checkpoint file.
    pub fn delta(&mut self) -> Result<DeltaWriter> {
        let t = &self.target;
        let kind = if t.staged { "pending" } else { "delta" };
        let name = format!(
            "{kind}-{:08}-{:08}-{}-{}.parquet",
            t.generation, t.seq, self.name, self.next
        );
        self.next += 1;
        // Rows order by generation, then run: a base's rows (from older generations) always
        // come before this generation's checkpoints. Within one run each id is recorded once.
        let order = (t.generation << 32) | t.seq;
        DeltaWriter::new(
            Arc::clone(&self.dir.store),
            self.dir.dir.clone().join(name.as_str()),
            format!("{}/{name}", self.dir.display),
            &t.embed_fp,
            order,
        )
    }

    pub fn display(&self) -> &str {
        &self.dir.display
    }

    /// Its files are staged (`pending-…`), joining the state only once the output is.
    pub fn staged(&self) -> bool {
        self.target.staged
    }
}

fn parquet_writer(
    store: Arc<dyn ObjectStore>,
    path: Path,
    display: &str,
) -> Result<AsyncArrowWriter<BufWriter>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1)?))
        .build();
    AsyncArrowWriter::try_new(BufWriter::new(store, path), state_schema(), Some(props))
        .with_context(|| format!("cannot start {display}"))
}

/// One delta file being written; nothing of it is visible before [`DeltaWriter::publish`].
pub struct DeltaWriter {
    writer: AsyncArrowWriter<BufWriter>,
    display: String,
    embed_fp: String,
    /// The `seq` of its rows: later checkpoints win.
    order: u64,
    rows: u64,
}

impl DeltaWriter {
    fn new(
        store: Arc<dyn ObjectStore>,
        path: Path,
        display: String,
        embed_fp: &str,
        order: u64,
    ) -> Result<DeltaWriter> {
        Ok(DeltaWriter {
            writer: parquet_writer(store, path, &display)?,
            display,
            embed_fp: embed_fp.to_string(),
            order,
            rows: 0,
        })
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub async fn write(&mut self, rows: &[StateRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.text_fp.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.meta_fp.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                self.embed_fp.as_str(),
                n,
            ))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.chunks))),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.deleted)),
            )),
            Arc::new(UInt64Array::from_iter_values(std::iter::repeat_n(
                self.order, n,
            ))),
        ];
        let batch = RecordBatch::try_new(state_schema(), columns)?;
        self.writer
            .write(&batch)
            .await
            .with_context(|| format!("cannot write the state checkpoint {}", self.display))?;
        self.rows += n as u64;
        Ok(())
    }

    /// Makes the delta visible, all at once.
    pub async fn publish(self) -> Result<()> {
        self.writer
            .close()
            .await
            .with_context(|| format!("cannot write the state checkpoint {}", self.display))?;
        Ok(())
    }

    /// Drops the delta unwritten.
    pub async fn discard(self) {
        let mut inner = self.writer.into_inner();
        let _ = inner.abort().await;
    }
}
