//! `sink.pinecone:` settings and Pinecone's documented limits, checked when the pipeline loads.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};
use crate::secret::Secret;

/// Pinecone's documented limits.
pub mod limits {
    pub const MAX_BATCH: usize = 1000;
    pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
    pub const MAX_METADATA_BYTES: usize = 40 * 1024;
    pub const MAX_ID_BYTES: usize = 512;
    pub const MAX_IDS_PER_DELETE: usize = 1000;
    pub const MAX_NAMESPACE_BYTES: usize = 512;
    pub const MAX_CONCURRENCY: usize = 256;
}

/// What to do with a row whose metadata is over Pinecone's 40 KB limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OversizedMetadata {
    /// Fail the run with an error naming the id.
    #[default]
    Error,
    /// Cut the string field named by `truncate_field` until the metadata fits.
    Truncate,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PineconeSinkSpec {
    /// Index name, resolved to its data-plane host through the control plane.
    pub index: String,
    /// Data-plane host (skips the control-plane lookup); `https://` unless a scheme is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Control-plane URL; default `$PINECONE_CONTROLLER_HOST`, then `https://api.pinecone.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<String>,
    /// The API key; default `$PINECONE_API_KEY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// A file holding the API key (used when `api_key` and `$PINECONE_API_KEY` are absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<PathBuf>,
    /// Namespace to write to (default: the index's default namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Columns sent as metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata: Vec<String>,
    /// Upper bound on vectors per upsert request (at most 1000); bytes also bound each request.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Upper bound on serialized bytes per upsert request (at most 2 MB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Upper bound on upsert requests in flight; the writer adapts below it.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retries of one request (429, 5xx, timeouts, dropped connections) before its rows go to
    /// the dead-letter file.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Timeout of one HTTP request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
    /// When every request has failed for this long, the index counts as unreachable: the run
    /// stops embedding, saves what it computed in the dead-letter file and fails.
    #[serde(default = "default_give_up_after")]
    pub give_up_after_secs: u64,
    /// Policy for a row whose metadata is over 40 KB.
    #[serde(default)]
    pub oversized_metadata: OversizedMetadata,
    /// The string metadata field cut by `oversized_metadata: truncate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_field: Option<String>,
    /// Where rows that could not be written go (JSON lines); default
    /// `embedflow-dead-letter-<index>-<unix time>.jsonl` in the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<PathBuf>,
    /// Load through Pinecone's bulk import instead of upserts (backfills of 10M+ rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub import: Option<ImportSpec>,
}

/// `sink.pinecone.import:` the files' place and how the import runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// `s3://bucket/prefix/`: the files go to `<prefix>/<namespace>/part-NNNNN.parquet`.
    pub uri: String,
    /// Pinecone's storage integration for a private bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration_id: Option<String>,
    /// `abort` (default): a bad record fails the import; `continue`: it is skipped.
    #[serde(default)]
    pub error_mode: ImportErrorMode,
    /// Follow the import to its end (default); `false`: start it and exit, for a later
    /// `embedflow import wait ID`.
    #[serde(default = "default_true")]
    pub wait: bool,
    /// Rows per file (Pinecone takes files up to 10 GB: 1M rows of 1,536 floats is about 6 GB).
    #[serde(default = "default_file_rows")]
    pub file_rows: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImportErrorMode {
    #[default]
    Abort,
    Continue,
}

fn default_true() -> bool {
    true
}
fn default_file_rows() -> usize {
    1_000_000
}

fn default_batch_size() -> usize {
    200
}
fn default_max_request_bytes() -> usize {
    2_000_000
}
fn default_concurrency() -> usize {
    16
}
fn default_max_retries() -> usize {
    8
}
fn default_request_timeout() -> u64 {
    30
}
fn default_give_up_after() -> u64 {
    120
}

impl PineconeSinkSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        use limits::*;
        let key = |k: &str| format!("sink.pinecone.{k}");
        if self.index.trim().is_empty() {
            return Err(invalid(&key("index"), "is empty"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(invalid(
                &key("batch_size"),
                format!(
                    "must be 1 to {MAX_BATCH} (Pinecone's limit per upsert), got {}",
                    self.batch_size
                ),
            ));
        }
        if !(64 * 1024..=MAX_REQUEST_BYTES).contains(&self.max_request_bytes) {
            return Err(invalid(
                &key("max_request_bytes"),
                format!(
                    "must be 65536 to {MAX_REQUEST_BYTES} (Pinecone's 2 MB limit), got {}",
                    self.max_request_bytes
                ),
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(invalid(
                &key("concurrency"),
                format!("must be 1 to {MAX_CONCURRENCY}, got {}", self.concurrency),
            ));
        }
        if self.request_timeout_secs == 0 {
            return Err(invalid(&key("request_timeout_secs"), "must be at least 1"));
        }
        if self.give_up_after_secs == 0 {
            return Err(invalid(&key("give_up_after_secs"), "must be at least 1"));
        }
        if let Some(ns) = &self.namespace {
            if !ns.is_ascii() {
                let bad = ns.chars().find(|c| !c.is_ascii()).unwrap_or('?');
                return Err(invalid(
                    &key("namespace"),
                    format!(
                        "`{ns}` holds the non-ASCII character `{bad}`: Pinecone namespaces are ASCII only"
                    ),
                ));
            }
            if ns.len() > MAX_NAMESPACE_BYTES {
                return Err(invalid(
                    &key("namespace"),
                    format!(
                        "is {} characters long; Pinecone allows at most {MAX_NAMESPACE_BYTES}",
                        ns.len()
                    ),
                ));
            }
        }
        if let Some(import) = &self.import {
            if !import.uri.starts_with("s3://") {
                return Err(invalid(
                    &key("import.uri"),
                    format!(
                        "`{}`: Pinecone imports from object storage: give s3://bucket/prefix/",
                        import.uri
                    ),
                ));
            }
            if import.file_rows == 0 {
                return Err(invalid(&key("import.file_rows"), "must be at least 1"));
            }
        }
        match (self.oversized_metadata, &self.truncate_field) {
            (OversizedMetadata::Truncate, None) => Err(invalid(
                &key("oversized_metadata"),
                "is truncate: name the text field to cut with truncate_field",
            )),
            (OversizedMetadata::Truncate, Some(f)) if !self.metadata.contains(f) => Err(invalid(
                &key("truncate_field"),
                format!(
                    "`{f}` is not one of the metadata columns {:?}",
                    self.metadata
                ),
            )),
            _ => Ok(()),
        }
    }
}
