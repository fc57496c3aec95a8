//! Bulk import (`/bulk/imports`): start, describe, list and cancel imports of Parquet files from
//! an S3-compatible store, validated as Pinecone validates them.
//!
//! Under the import's URI each folder is a namespace (`__default__` for the default one) that
//! must not exist in the index yet; its `.parquet` files hold exactly `id` (string), `values`
//! (list of float32), and optionally `metadata` (a JSON object as a string) and `sparse_values`.
//! A file over [`ImportStorage::max_file_bytes`] (Pinecone: 10 GB), another column, a wrong
//! type or a record over Pinecone's limits fails the import (`errorMode.onError: abort`, the
//! default) or skips the record (`continue`). An import moves Pending → InProgress →
//! Completed / Failed / Cancelled, one file at a time, `file_delay` apart.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::limits::{self, ApiError};
use crate::store::{Index, Record};

/// Where imports read from: an S3-compatible endpoint and its credentials (Pinecone's
/// "storage integration").
#[derive(Debug, Clone)]
pub struct ImportStorage {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
    /// Largest file an import takes (Pinecone: 10 GB).
    pub max_file_bytes: u64,
    /// Time each file takes to import, so that a test can see an import in progress.
    pub file_delay: Duration,
}

impl ImportStorage {
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> ImportStorage {
        ImportStorage {
            endpoint: endpoint.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            region: "us-east-1".to_string(),
            max_file_bytes: 10_000_000_000,
            file_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    fn as_str(&self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::InProgress => "InProgress",
            Status::Completed => "Completed",
            Status::Failed => "Failed",
            Status::Cancelled => "Cancelled",
        }
    }
    fn finished(&self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }
}

#[derive(Debug, Clone)]
struct Import {
    id: String,
    uri: String,
    status: Status,
    percent: f64,
    records: u64,
    created: String,
    finished: Option<String>,
    error: Option<String>,
}

impl Import {
    fn describe(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "uri": self.uri,
            "status": self.status.as_str(),
            "createdAt": self.created,
            "percentComplete": self.percent,
            "recordsImported": self.records,
        });
        if let Some(f) = &self.finished {
            v["finishedAt"] = json!(f);
        }
        if let Some(e) = &self.error {
            v["error"] = json!(e);
        }
        v
    }
}

/// The imports of one index.
pub struct Imports {
    storage: Option<ImportStorage>,
    list: Mutex<BTreeMap<u64, Import>>,
    next: AtomicU64,
}

fn now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{secs}")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StartImport {
    uri: String,
    /// Accepted as Pinecone accepts it; this server reads with its own credentials.
    #[serde(default)]
    #[allow(dead_code)]
    integration_id: Option<String>,
    #[serde(default)]
    error_mode: Option<ErrorMode>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ErrorMode {
    on_error: String,
}

impl Imports {
    pub fn new(storage: Option<ImportStorage>) -> Imports {
        Imports {
            storage,
            list: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Import>> {
        self.list.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `POST /bulk/imports`: checks the request, then imports in the background.
    pub fn start(self: &Arc<Self>, index: Arc<Index>, req: StartImport) -> Result<Value, ApiError> {
        let Some(storage) = self.storage.clone() else {
            return Err(ApiError::invalid(
                "Bulk import is not configured on this server (no storage integration)",
            ));
        };
        let continue_on_error = match req.error_mode.as_ref().map(|m| m.on_error.as_str()) {
            None | Some("abort") => false,
            Some("continue") => true,
            Some(other) => {
                return Err(ApiError::invalid(format!(
                    "Invalid errorMode.onError `{other}`: expected abort or continue"
                )));
            }
        };
        let (bucket, prefix) = parse_uri(&req.uri)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let import = Import {
            id: n.to_string(),
            uri: req.uri.clone(),
            status: Status::Pending,
            percent: 0.0,
            records: 0,
            created: now(),
            finished: None,
            error: None,
        };
        self.lock().insert(n, import);
        let imports = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = imports
                .run(n, &index, &storage, &bucket, &prefix, continue_on_error)
                .await;
            imports.update(n, |i| {
                if i.status.finished() {
                    return;
                }
                match outcome {
                    Ok(()) => {
                        i.status = Status::Completed;
                        i.percent = 100.0;
                    }
                    Err(e) => {
                        i.status = Status::Failed;
                        i.error = Some(e);
                    }
                }
                i.finished = Some(now());
            });
        });
        Ok(json!({ "id": n.to_string() }))
    }

    fn update(&self, n: u64, f: impl FnOnce(&mut Import)) {
        if let Some(i) = self.lock().get_mut(&n) {
            f(i);
        }
    }

    fn cancelled(&self, n: u64) -> bool {
        self.lock()
            .get(&n)
            .is_some_and(|i| i.status == Status::Cancelled)
    }

    /// The import itself: lists the namespaces' files, checks them all, then imports file by
    /// file. An error is the import's `error` text.
    async fn run(
        &self,
        n: u64,
        index: &Index,
        storage: &ImportStorage,
        bucket: &str,
        prefix: &str,
        continue_on_error: bool,
    ) -> Result<(), String> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&storage.endpoint)
            .with_allow_http(true)
            .with_access_key_id(&storage.access_key)
            .with_secret_access_key(&storage.secret_key)
            .with_region(&storage.region)
            .with_bucket_name(bucket)
            .with_virtual_hosted_style_request(false)
            .build()
            .map_err(|e| format!("cannot reach s3://{bucket}: {e}"))?;
        let listing: Vec<_> = store
            .list(Some(&object_store::path::Path::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| format!("cannot list s3://{bucket}/{prefix}: {e}"))?;
        // namespace -> files
        let mut files: BTreeMap<String, Vec<(object_store::path::Path, u64)>> = BTreeMap::new();
        for meta in listing {
            let key = meta.location.to_string();
            let rest = key
                .strip_prefix(prefix)
                .unwrap_or(&key)
                .trim_start_matches('/');
            let Some((folder, name)) = rest.split_once('/') else {
                continue;
            };
            if !name.ends_with(".parquet") || name.contains('/') {
                continue;
            }
            if meta.size > storage.max_file_bytes {
                return Err(format!(
                    "File {key} is {} bytes, over the {} bytes a file may have",
                    meta.size, storage.max_file_bytes
                ));
            }
            let ns = if folder == "__default__" { "" } else { folder };
            files
                .entry(ns.to_string())
                .or_default()
                .push((meta.location, meta.size));
        }
        if files.is_empty() {
            return Err(format!(
                "No Parquet files found under s3://{bucket}/{prefix} (expected <namespace>/*.parquet)"
            ));
        }
        for ns in files.keys() {
            if index.with_namespace(ns, |m| m.is_some_and(|m| !m.is_empty())) {
                let shown = if ns.is_empty() { "__default__" } else { ns };
                return Err(format!(
                    "Namespace {shown} already exists in the index: an import writes only to new namespaces"
                ));
            }
        }
        self.update(n, |i| i.status = Status::InProgress);
        let total: usize = files.values().map(Vec::len).sum();
        let mut done = 0usize;
        for (ns, list) in &files {
            for (path, _) in list {
                if self.cancelled(n) {
                    return Ok(());
                }
                tokio::time::sleep(storage.file_delay).await;
                let bytes = store
                    .get(path)
                    .await
                    .map_err(|e| format!("cannot read {path}: {e}"))?
                    .bytes()
                    .await
                    .map_err(|e| format!("cannot read {path}: {e}"))?;
                let records = read_records(
                    &bytes,
                    index.config.dimension,
                    index.config.metric,
                    continue_on_error,
                )
                .map_err(|e| format!("{path}: {e}"))?;
                let count = records.len() as u64;
                if self.cancelled(n) {
                    return Ok(());
                }
                index.upsert(ns, records);
                done += 1;
                self.update(n, |i| {
                    i.records += count;
                    i.percent = 100.0 * done as f64 / total as f64;
                });
            }
        }
        Ok(())
    }

    /// `GET /bulk/imports/{id}`.
    pub fn describe(&self, id: &str) -> Result<Value, ApiError> {
        id.parse::<u64>()
            .ok()
            .and_then(|n| self.lock().get(&n).map(Import::describe))
            .ok_or_else(|| ApiError::not_found(format!("Import {id} not found")))
    }

    /// `GET /bulk/imports`: every import, oldest first.
    pub fn list(&self) -> Value {
        let data: Vec<Value> = self.lock().values().map(Import::describe).collect();
        json!({ "data": data, "pagination": null })
    }

    /// `DELETE /bulk/imports/{id}`: a running import stops before its next file.
    pub fn cancel(&self, id: &str) -> Result<Value, ApiError> {
        let n = id
            .parse::<u64>()
            .map_err(|_| ApiError::not_found(format!("Import {id} not found")))?;
        let mut list = self.lock();
        let import = list
            .get_mut(&n)
            .ok_or_else(|| ApiError::not_found(format!("Import {id} not found")))?;
        if import.status.finished() {
            return Err(ApiError::invalid(format!(
                "Import {id} is {} and cannot be cancelled",
                import.status.as_str()
            )));
        }
        import.status = Status::Cancelled;
        import.finished = Some(now());
        Ok(json!({}))
    }
}

/// `s3://bucket/prefix/` → (bucket, prefix without slashes at its ends).
fn parse_uri(uri: &str) -> Result<(String, String), ApiError> {
    let rest = uri.strip_prefix("s3://").ok_or_else(|| {
        ApiError::invalid(format!("Invalid uri {uri}: expected s3://bucket/prefix/"))
    })?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ApiError::invalid(format!("Invalid uri {uri}: no bucket")));
    }
    Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
}

/// The records of one import file, checked as upserts are.
fn read_records(
    bytes: &bytes::Bytes,
    dimension: usize,
    metric: crate::store::Metric,
    continue_on_error: bool,
) -> Result<Vec<(String, Record)>, String> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes.clone())
        .map_err(|e| format!("not a Parquet file: {e}"))?;
    let schema = reader.schema().clone();
    for field in schema.fields() {
        let ok = match field.name().as_str() {
            "id" => matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8),
            "values" => {
                matches!(field.data_type(), DataType::List(item) if item.data_type() == &DataType::Float32)
            }
            "metadata" => matches!(field.data_type(), DataType::Utf8 | DataType::LargeUtf8),
            "sparse_values" => true,
            other => {
                return Err(format!(
                    "unexpected column `{other}`: a file holds id, values, and optionally sparse_values and metadata"
                ));
            }
        };
        if !ok {
            return Err(format!(
                "column `{}` is {}, expected id: string, values: list<float32>, metadata: string (JSON)",
                field.name(),
                field.data_type()
            ));
        }
    }
    for required in ["id", "values"] {
        if schema.field_with_name(required).is_err() {
            return Err(format!("missing column `{required}`"));
        }
    }
    let mut out = Vec::new();
    for batch in reader.build().map_err(|e| e.to_string())? {
        let batch = batch.map_err(|e| e.to_string())?;
        for row in 0..batch.num_rows() {
            match record(&batch, row, dimension, metric) {
                Ok(r) => out.push(r),
                // errorMode.onError: continue skips the record.
                Err(_) if continue_on_error => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

fn record(
    batch: &RecordBatch,
    row: usize,
    dimension: usize,
    metric: crate::store::Metric,
) -> Result<(String, Record), String> {
    let text = |name: &str| -> Option<String> {
        let col = batch.column_by_name(name)?;
        let col = datafusion::arrow::compute::cast(col, &DataType::Utf8).ok()?;
        let col = col.as_string::<i32>();
        col.is_valid(row).then(|| col.value(row).to_string())
    };
    let id = text("id").ok_or_else(|| format!("row {row}: null id"))?;
    limits::check_id(&id).map_err(|e| e.message)?;
    let values = batch
        .column_by_name("values")
        .ok_or("no values column")?
        .as_list::<i32>();
    if values.is_null(row) {
        return Err(format!("id {id}: null values"));
    }
    let values: Vec<f32> = values
        .value(row)
        .as_primitive::<Float32Type>()
        .values()
        .to_vec();
    limits::check_values(&id, &values, dimension).map_err(|e| e.message)?;
    let metadata = match text("metadata") {
        None => None,
        Some(json) => {
            let map: Map<String, Value> = serde_json::from_str(&json)
                .map_err(|e| format!("id {id}: metadata is not a JSON object: {e}"))?;
            limits::check_metadata(&id, &map).map_err(|e| e.message)?;
            Some(map)
        }
    };
    let sparse = match batch.column_by_name("sparse_values") {
        Some(col) if col.is_valid(row) => {
            let col = col.as_struct();
            let list = |name: &str| {
                col.column_by_name(name)
                    .map(|c| c.as_list::<i32>().value(row))
            };
            let (Some(indices), Some(values)) = (list("indices"), list("values")) else {
                return Err(format!("id {id}: sparse_values needs indices and values"));
            };
            let sparse = crate::store::SparseValues {
                indices: indices
                    .as_primitive::<datafusion::arrow::datatypes::UInt32Type>()
                    .values()
                    .to_vec(),
                values: values.as_primitive::<Float32Type>().values().to_vec(),
            };
            limits::check_sparse(&id, &sparse, metric).map_err(|e| e.message)?;
            Some(sparse)
        }
        _ => None,
    };
    Ok((
        id,
        Record {
            values,
            metadata,
            sparse,
        },
    ))
}
