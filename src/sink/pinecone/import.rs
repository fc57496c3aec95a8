//! Bulk import (`sink.pinecone.import`), Pinecone's way to load 10M+ records: instead of
//! upserting, the run writes Pinecone's import layout, `<uri>/<namespace>/part-NNNNN.parquet`
//! (exactly `id`, `values` and `metadata` as a JSON string), starts the import
//! (`POST /bulk/imports`) and follows it to its end with progress (percent, records imported).
//!
//! Resumable: a marker object beside the prefix (`<uri>.embedflow-import.json`) records what
//! the run did. A re-run whose marker names a running import re-attaches to it instead of
//! embedding again and starting a second one; a marker left while files were being written means
//! those files are ours to replace. An import writes only into a namespace that does not exist
//! yet (Pinecone's rule), so it is for backfills; later changes go through upserts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::parquet::arrow::AsyncArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use futures::TryStreamExt;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::client::{CallError, PineconeClient};
use super::config::{ImportErrorMode, ImportSpec, PineconeSinkSpec};
use super::records::RecordEncoder;
use super::{Connection, connect};
use crate::embed::bm25::udf::SPARSE_COLUMN;
use crate::error::config_error;
use crate::sink::part_name::PartName;
use crate::sink::{Sink, SinkReport};
use crate::storage::{self, RemoteUrl, StorageSpec};

/// How often a followed import is described.
const POLL: Duration = Duration::from_secs(2);

/// Where an import's files go and what the run did there.
struct Place {
    store: Arc<dyn ObjectStore>,
    /// `s3://bucket/prefix` as written, for messages and the import request.
    uri: String,
    /// The namespace's folder: `prefix/<namespace>` (`__default__` for the default one).
    folder: ObjectPath,
    marker: ObjectPath,
    /// A cluster's tasks write their files here first (`<prefix>.embedflow-staging/`, outside
    /// the import's prefix), then move them into `folder` under the name their rows give.
    staging: ObjectPath,
}

/// The marker's contents.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Marker {
    /// `writing`, then `written` (every file closed), then `started` with the import's id.
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    import_id: Option<String>,
    #[serde(default)]
    files: Vec<String>,
    #[serde(default)]
    rows: u64,
}

impl Place {
    fn of(spec: &PineconeSinkSpec, import: &ImportSpec, storage: &StorageSpec) -> Result<Place> {
        let url = RemoteUrl::parse("sink.pinecone.import.uri", &import.uri)?;
        let store = storage::s3_store(&import.uri, &url.bucket, storage.s3.as_ref())?;
        let prefix = url.key.trim_end_matches('/').to_string();
        let namespace = match spec.namespace.as_deref() {
            None | Some("") => "__default__",
            Some(ns) => ns,
        };
        Ok(Place {
            store,
            uri: format!("s3://{}/{prefix}", url.bucket),
            folder: ObjectPath::from(format!("{prefix}/{namespace}")),
            marker: ObjectPath::from(format!("{prefix}.embedflow-import.json")),
            staging: ObjectPath::from(format!("{prefix}.embedflow-staging")),
        })
    }

    async fn marker(&self) -> Result<Option<Marker>> {
        match self.store.get(&self.marker).await {
            Ok(got) => {
                let bytes = got.bytes().await?;
                let marker = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{}.embedflow-import.json is not an embedflow import marker (delete it to start over)",
                        self.uri
                    )
                })?;
                Ok(Some(marker))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => {
                Err(anyhow!(e).context(format!("cannot read {}.embedflow-import.json", self.uri)))
            }
        }
    }

    async fn set_marker(&self, marker: &Marker) -> Result<()> {
        let body = serde_json::to_vec_pretty(marker)?;
        self.store
            .put(&self.marker, PutPayload::from(body))
            .await
            .with_context(|| format!("cannot write {}.embedflow-import.json", self.uri))?;
        Ok(())
    }

    async fn remove_marker(&self) -> Result<()> {
        match self.store.delete(&self.marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(anyhow!(e).context("cannot remove the import marker")),
        }
    }

    /// The objects in the namespace's folder.
    async fn files(&self) -> Result<Vec<ObjectPath>> {
        self.listed(&self.folder).await
    }

    async fn listed(&self, folder: &ObjectPath) -> Result<Vec<ObjectPath>> {
        let listed: Vec<_> = self
            .store
            .list(Some(folder))
            .try_collect()
            .await
            .with_context(|| format!("cannot list {folder}/"))?;
        Ok(listed.into_iter().map(|m| m.location).collect())
    }

    /// Removes the import's files and what tasks left in the staging folder.
    async fn remove_files(&self) -> Result<()> {
        self.remove_staged().await?;
        for f in self.files().await? {
            self.store
                .delete(&f)
                .await
                .with_context(|| format!("cannot remove {f}"))?;
        }
        Ok(())
    }

    /// What failed or repeated tasks left in the staging folder.
    async fn remove_staged(&self) -> Result<()> {
        for f in self.listed(&self.staging).await? {
            self.store
                .delete(&f)
                .await
                .with_context(|| format!("cannot remove {f}"))?;
        }
        Ok(())
    }
}

/// `GET /bulk/imports/{id}`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportStatus {
    pub id: String,
    #[serde(default)]
    pub uri: String,
    pub status: String,
    #[serde(default)]
    pub percent_complete: f64,
    #[serde(default)]
    pub records_imported: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ImportStatus {
    fn finished(&self) -> bool {
        matches!(self.status.as_str(), "Completed" | "Failed" | "Cancelled")
    }
}

#[derive(Deserialize)]
struct Started {
    id: String,
}

/// `GET /bulk/imports`: a page of imports.
#[derive(Deserialize)]
struct ImportPage {
    #[serde(default)]
    data: Vec<ImportStatus>,
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    next: Option<String>,
}

/// The latest import of `uri` that has not failed or been cancelled, from the index's list.
async fn started_for(client: &PineconeClient, uri: &str) -> Result<Option<ImportStatus>> {
    let mut token: Option<String> = None;
    let mut found = None;
    loop {
        let path = match &token {
            Some(t) => format!("/bulk/imports?limit=100&paginationToken={t}"),
            None => "/bulk/imports?limit=100".to_string(),
        };
        let page: ImportPage = client
            .get_retrying(&path)
            .await
            .map_err(|e| call_error("listing the index's imports", e))?;
        for status in page.data {
            if status.uri.trim_end_matches('/') == uri
                && !matches!(status.status.as_str(), "Failed" | "Cancelled")
            {
                found = Some(status);
            }
        }
        token = page.pagination.and_then(|p| p.next);
        if token.is_none() {
            return Ok(found);
        }
    }
}

fn call_error(what: &str, e: CallError) -> anyhow::Error {
    match e {
        CallError::Final { status, message } if status.is_client_error() => {
            anyhow!("{what}: Pinecone answered {status}: {message}")
        }
        other => anyhow!("{what}: {other}"),
    }
}

/// Describes an import.
pub async fn describe(client: &PineconeClient, id: &str) -> Result<ImportStatus> {
    client
        .get_retrying(&format!("/bulk/imports/{id}"))
        .await
        .map_err(|e| call_error(&format!("import {id}"), e))
}

/// Cancels an import.
pub async fn cancel(client: &PineconeClient, id: &str) -> Result<()> {
    client
        .delete::<serde_json::Value>(&format!("/bulk/imports/{id}"))
        .await
        .map_err(|e| call_error(&format!("cancelling import {id}"), e))?;
    Ok(())
}

/// Follows an import until it ends, logging its progress; a failed or cancelled import is an
/// error that names Pinecone's reason.
pub async fn follow(client: &PineconeClient, id: &str) -> Result<ImportStatus> {
    let mut last = String::new();
    loop {
        let status = describe(client, id).await?;
        let line = format!(
            "import {id}: {} ({:.0}%, {} records imported)",
            status.status, status.percent_complete, status.records_imported
        );
        if line != last {
            tracing::info!("{line}");
            last = line;
        }
        match status.status.as_str() {
            "Completed" => return Ok(status),
            "Failed" => bail!(
                "Pinecone import {id} failed: {}",
                status.error.as_deref().unwrap_or("no reason given")
            ),
            "Cancelled" => bail!("Pinecone import {id} was cancelled"),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

/// Pinecone's import columns: `id`, `values`, `metadata` (JSON text) and, with `embed.sparse`,
/// `sparse_values` (`indices`, `values`).
fn import_file_schema(sparse: bool) -> SchemaRef {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "values",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            false,
        ),
        Field::new("metadata", DataType::Utf8, true),
    ];
    if sparse {
        fields.push(Field::new(
            SPARSE_COLUMN,
            crate::embed::bm25::udf::sparse_type(),
            true,
        ));
    }
    Arc::new(Schema::new(fields))
}

/// What an earlier run left: `Some(summary)` when it started an import that this run followed
/// to its end (or, with `wait: false`, found), so nothing is embedded again.
pub async fn resume(spec: &PineconeSinkSpec, storage: &StorageSpec) -> Result<Option<SinkReport>> {
    let Some(import) = &spec.import else {
        return Ok(None);
    };
    let place = Place::of(spec, import, storage)?;
    let Some(marker) = place.marker().await? else {
        tracing::debug!("no import marker beside {}", place.uri);
        return Ok(None);
    };
    tracing::debug!("import marker beside {}: {marker:?}", place.uri);
    let conn = connect(spec, None).await?;
    let id = match marker.import_id.clone() {
        Some(id) => id,
        // Every file written, the run killed around the request that starts the import: the
        // index's list of imports says whether it started.
        None if marker.state == "written" => match started_for(&conn.client, &place.uri).await? {
            Some(status) => {
                let mut marker = marker.clone();
                marker.state = "started".into();
                marker.import_id = Some(status.id.clone());
                place.set_marker(&marker).await?;
                status.id
            }
            None => return Ok(None),
        },
        // Killed while writing files: this run writes them again.
        None => return Ok(None),
    };
    let status = describe(&conn.client, &id).await?;
    if matches!(status.status.as_str(), "Failed" | "Cancelled") {
        tracing::warn!(
            "the import {id} an earlier run started is {}{}: writing the files again and starting a new import",
            status.status,
            status
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        );
        place.remove_files().await?;
        place.remove_marker().await?;
        return Ok(None);
    }
    tracing::info!(
        "an earlier run wrote {} rows to {} and started import {id} ({}): following it instead of embedding again",
        marker.rows,
        place.uri,
        status.status
    );
    let done = if import.wait && !status.finished() {
        follow(&conn.client, &id).await?
    } else {
        status
    };
    Ok(Some(
        report(&conn, &place, &marker, &done, import.wait).await?,
    ))
}

/// The summary's sink part for an import that ended (or was left running, `wait: false`).
async fn report(
    conn: &Connection,
    place: &Place,
    marker: &Marker,
    status: &ImportStatus,
    wait: bool,
) -> Result<SinkReport> {
    if status.status == "Completed" {
        // The index holds the rows: the marker has done its work (the files may stay, as
        // Pinecone's own guidance allows, or be removed by a lifecycle rule).
        place.remove_marker().await?;
    }
    let rows_written = if status.status == "Completed" {
        status.records_imported
    } else {
        marker.rows
    };
    let location = if wait || status.finished() {
        format!(
            "{} through import {} from {}",
            conn.display, status.id, place.uri
        )
    } else {
        format!(
            "{} ({} rows in {} files; import {} {}: `embedflow import wait {} --pipeline PIPELINE`)",
            place.uri,
            marker.rows,
            marker.files.len(),
            status.id,
            status.status,
            status.id
        )
    };
    Ok(SinkReport {
        rows_written,
        location,
        import_id: Some(status.id.clone()),
        ..SinkReport::default()
    })
}

/// What a run prepares before an import's files are written (the preflight and the marker),
/// and the import it then starts and follows: the files themselves are written by
/// [`ImportFiles`], here or by a cluster's tasks.
pub struct ImportTarget {
    conn: Connection,
    import: ImportSpec,
    place: Place,
    marker: Marker,
}

impl ImportTarget {
    /// Preflight: the index and its dimension `dim`, a namespace that does not exist yet, and
    /// a prefix that holds nothing but an earlier run's files (which are removed).
    pub async fn prepare(
        spec: &PineconeSinkSpec,
        storage: &StorageSpec,
        dim: usize,
    ) -> Result<ImportTarget> {
        let import = spec
            .import
            .clone()
            .context("sink.pinecone.import is not set")?;
        let conn = connect(spec, Some(dim)).await?;
        let namespace = spec.namespace.clone().unwrap_or_default();
        let stats = super::client::index_stats(&conn.client).await?;
        let held = stats
            .namespaces
            .get(&namespace)
            .or_else(|| {
                namespace
                    .is_empty()
                    .then(|| stats.namespaces.get("__default__"))
                    .flatten()
            })
            .map(|n| n.vector_count)
            .unwrap_or(0);
        if held > 0 {
            let shown = if namespace.is_empty() {
                "the default namespace"
            } else {
                namespace.as_str()
            };
            return Err(config_error(format!(
                "sink.pinecone.import: {shown} of index `{}` already holds {held} vectors, and a bulk import writes only into a new namespace; upsert into it (leave out sink.pinecone.import) or import into a new sink.pinecone.namespace",
                spec.index
            )));
        }
        let place = Place::of(spec, &import, storage)?;
        let ours = place.marker().await?.is_some();
        let existing = place.files().await?;
        if !existing.is_empty() && !ours {
            return Err(config_error(format!(
                "sink.pinecone.import.uri: {}/ already holds {} files that no embedflow run wrote (e.g. {}); an import needs a prefix of its own",
                place.uri,
                existing.len(),
                existing[0]
            )));
        }
        if ours {
            // A killed run's files: replaced whole.
            place.remove_files().await?;
        }
        let marker = Marker {
            state: "writing".into(),
            ..Marker::default()
        };
        place.set_marker(&marker).await?;
        Ok(ImportTarget {
            conn,
            import,
            place,
            marker,
        })
    }

    /// `s3://bucket/prefix`.
    pub fn uri(&self) -> &str {
        &self.place.uri
    }

    /// True once the import was started (it runs on whatever becomes of this run).
    pub fn started(&self) -> bool {
        self.marker.import_id.is_some()
    }

    /// The files in the namespace's folder, as written by every task of a cluster's job (what
    /// failed attempts left in the staging folder is removed).
    pub async fn written_files(&self) -> Result<Vec<String>> {
        self.place.remove_staged().await?;
        let mut files: Vec<String> = self
            .place
            .files()
            .await?
            .into_iter()
            .map(|f| f.to_string())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every file written (`files`, `rows` rows in all): starts the import and, with
    /// `wait: true`, follows it to its end.
    pub async fn start(&mut self, files: Vec<String>, rows: u64) -> Result<SinkReport> {
        self.marker.files = files;
        self.marker.rows = rows;
        if self.marker.rows == 0 {
            self.place.remove_files().await?;
            self.place.remove_marker().await?;
            return Ok(SinkReport {
                location: format!("{} (nothing to import)", self.place.uri),
                ..SinkReport::default()
            });
        }
        self.marker.state = "written".into();
        self.place.set_marker(&self.marker).await?;
        let mut body = serde_json::json!({ "uri": format!("{}/", self.place.uri) });
        if let Some(i) = &self.import.integration_id {
            body["integrationId"] = serde_json::json!(i);
        }
        body["errorMode"] = serde_json::json!({ "onError": match self.import.error_mode {
            ImportErrorMode::Abort => "abort",
            ImportErrorMode::Continue => "continue",
        }});
        let started: Started = self
            .conn
            .client
            .post_retrying("/bulk/imports", Bytes::from(serde_json::to_vec(&body)?))
            .await
            .map_err(|e| call_error(&format!("starting the import of {}", self.place.uri), e))?;
        self.marker.state = "started".into();
        self.marker.import_id = Some(started.id.clone());
        self.place.set_marker(&self.marker).await?;
        tracing::info!(
            "import {} started: {} rows in {} files under {}/",
            started.id,
            self.marker.rows,
            self.marker.files.len(),
            self.place.uri
        );
        let status = if self.import.wait {
            follow(&self.conn.client, &started.id).await?
        } else {
            describe(&self.conn.client, &started.id).await?
        };
        report(
            &self.conn,
            &self.place,
            &self.marker,
            &status,
            self.import.wait,
        )
        .await
    }

    /// After a failure or a signal: the files and the marker of an import that was not
    /// started are removed; a started one keeps running.
    pub async fn discard(&self) {
        if !self.started() {
            let _ = self.place.remove_files().await;
            let _ = self.place.remove_marker().await;
        }
    }

    pub fn abort_outcome(&self) -> &'static str {
        if self.started() {
            "the import keeps running on Pinecone; a re-run follows it instead of starting another"
        } else {
            "the import files written so far were removed and no import was started"
        }
    }
}

/// An import's files in Pinecone's layout, `file_rows` rows each, named `<stem>NNNNN.parquet`
/// in the namespace's folder.
pub struct ImportFiles {
    store: Arc<dyn ObjectStore>,
    folder: ObjectPath,
    uri: String,
    stem: String,
    /// The rows carry sparse values (`embed.sparse`).
    sparse: bool,
    /// A cluster's task: its files are written to the staging folder and moved into `folder`
    /// at the end, named by their rows ([`PartName`]), so a task that Ballista runs again
    /// replaces them rather than adding a second copy.
    staged: Option<(ObjectPath, PartName)>,
    file_rows: usize,
    encoder: RecordEncoder,
    writer: Option<AsyncArrowWriter<BufWriter>>,
    rows_in_file: usize,
    files: Vec<String>,
    rows: u64,
}

impl ImportFiles {
    /// The files of `spec`'s import for batches of `schema`, named `part-NNNNN.parquet`.
    pub fn new(
        spec: &PineconeSinkSpec,
        storage: &StorageSpec,
        schema: &Schema,
    ) -> Result<ImportFiles> {
        ImportFiles::create(spec, storage, schema, None)
    }

    /// The files of one of a cluster's tasks (`task`): staged, then named
    /// `part-<rows' name>-NNNNN.parquet`.
    pub fn for_task(
        spec: &PineconeSinkSpec,
        storage: &StorageSpec,
        schema: &Schema,
        task: &str,
    ) -> Result<ImportFiles> {
        ImportFiles::create(spec, storage, schema, Some(task))
    }

    fn create(
        spec: &PineconeSinkSpec,
        storage: &StorageSpec,
        schema: &Schema,
        task: Option<&str>,
    ) -> Result<ImportFiles> {
        let import = spec
            .import
            .as_ref()
            .context("sink.pinecone.import is not set")?;
        let place = Place::of(spec, import, storage)?;
        Ok(ImportFiles {
            store: place.store,
            folder: place.folder,
            uri: place.uri,
            stem: match task {
                Some(task) => format!("{task}-"),
                None => "part-".to_string(),
            },
            staged: task.map(|_| (place.staging, PartName::default())),
            sparse: schema.field_with_name(SPARSE_COLUMN).is_ok(),
            file_rows: import.file_rows,
            encoder: RecordEncoder::new(spec, schema)?,
            writer: None,
            rows_in_file: 0,
            files: Vec::new(),
            rows: 0,
        })
    }

    /// The import file's columns for a batch of `id`, `vector` and metadata columns.
    fn import_batch(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = cast(
            batch.column_by_name("id").context("no id column")?,
            &DataType::Utf8,
        )?;
        let schema = import_file_schema(self.sparse);
        let values = cast(
            batch.column_by_name("vector").context("no vector column")?,
            schema.field(1).data_type(),
        )?;
        let metadata: Vec<Option<String>> = self
            .encoder
            .encode_metadata(batch)?
            .into_iter()
            .map(|(_, m)| {
                (!m.is_empty())
                    .then(|| serde_json::to_string(&m))
                    .transpose()
            })
            .collect::<serde_json::Result<_>>()?;
        let metadata: ArrayRef = Arc::new(StringArray::from(metadata));
        let mut columns = vec![ids, values, metadata];
        if self.sparse {
            columns.push(Arc::clone(
                batch
                    .column_by_name(SPARSE_COLUMN)
                    .context("no sparse_values column")?,
            ));
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    async fn close_file(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.close()
                .await
                .with_context(|| format!("cannot complete an import file in {}/", self.uri))?;
        }
        self.rows_in_file = 0;
        Ok(())
    }

    fn new_file(&mut self) -> Result<&mut AsyncArrowWriter<BufWriter>> {
        let name = format!("{}{:05}.parquet", self.stem, self.files.len());
        let folder = match &self.staged {
            Some((staging, _)) => staging,
            None => &self.folder,
        };
        let path = ObjectPath::from(format!("{folder}/{name}"));
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        // S3's smallest part, at most two uploads in flight: memory stays bounded per file.
        let object = BufWriter::with_capacity(Arc::clone(&self.store), path.clone(), 5 << 20)
            .with_max_concurrency(2);
        let writer =
            AsyncArrowWriter::try_new(object, import_file_schema(self.sparse), Some(props))?;
        self.files.push(path.to_string());
        Ok(self.writer.insert(writer))
    }

    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if let Some((_, name)) = self.staged.as_mut() {
            name.add(&batch)?;
        }
        let rows = self.import_batch(&batch)?;
        let mut start = 0;
        while start < rows.num_rows() {
            if self.rows_in_file >= self.file_rows {
                self.close_file().await?;
            }
            let room = self.file_rows - self.rows_in_file;
            let take = room.min(rows.num_rows() - start);
            let part = rows.slice(start, take);
            let writer = match self.writer.as_mut() {
                Some(w) => w,
                None => self.new_file()?,
            };
            writer
                .write(&part)
                .await
                .with_context(|| format!("cannot write an import file in {}/", self.uri))?;
            self.rows_in_file += take;
            self.rows += take as u64;
            start += take;
        }
        Ok(())
    }

    /// Closes the last file (and moves a task's files into place): the files written and
    /// their rows.
    async fn close(&mut self) -> Result<(Vec<String>, u64)> {
        self.close_file().await?;
        let mut files = std::mem::take(&mut self.files);
        if let Some((_, name)) = &self.staged {
            let stem = name.stem();
            for (i, file) in files.iter_mut().enumerate() {
                let from = ObjectPath::from(file.as_str());
                let to = ObjectPath::from(format!("{}/{stem}-{i:05}.parquet", self.folder));
                self.store
                    .rename(&from, &to)
                    .await
                    .with_context(|| format!("cannot move {from} to {to}"))?;
                *file = to.to_string();
            }
        }
        Ok((files, self.rows))
    }
}

/// The files of one task of a cluster's job: the client starts the import once every task
/// has written its own.
#[async_trait]
impl Sink for ImportFiles {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        ImportFiles::write(self, batch).await
    }

    fn keeps_one_row_per_id(&self) -> bool {
        true
    }

    async fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        let (files, rows) = self.close().await?;
        Ok(SinkReport {
            rows_written: rows,
            location: format!("{} files under {}/", files.len(), self.uri),
            ..SinkReport::default()
        })
    }

    async fn abort(mut self: Box<Self>) {
        // An unfinished upload is dropped; the client removes the job's files.
        self.writer = None;
    }

    fn abort_outcome(&self) -> &'static str {
        "the client removes the job's import files"
    }
}

/// Writes the import layout on this machine, then starts (and follows) the import.
pub struct ImportSink {
    target: ImportTarget,
    files: ImportFiles,
}

impl ImportSink {
    /// The preflight ([`ImportTarget::prepare`]), then files named `part-NNNNN.parquet`.
    pub async fn open(
        spec: &PineconeSinkSpec,
        storage: &StorageSpec,
        schema: &Schema,
    ) -> Result<ImportSink> {
        let dim = super::vector_dim(schema)?;
        let target = ImportTarget::prepare(spec, storage, dim).await?;
        let files = ImportFiles::new(spec, storage, schema)?;
        Ok(ImportSink { target, files })
    }
}

#[async_trait]
impl Sink for ImportSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        self.files.write(batch).await
    }

    fn keeps_one_row_per_id(&self) -> bool {
        true
    }

    async fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        let (files, rows) = self.files.close().await?;
        self.target.start(files, rows).await
    }

    async fn abort(mut self: Box<Self>) {
        self.files.writer = None;
        self.target.discard().await;
    }

    fn abort_outcome(&self) -> &'static str {
        self.target.abort_outcome()
    }
}
