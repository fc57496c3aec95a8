//! The pipeline file: a typed spec parsed strictly from YAML.
//!
//! - Unknown keys are errors naming the key, its line and the closest real key.
//! - `${VAR}` and `${VAR:-default}` are replaced from the environment before parsing
//!   (`$${` writes a literal `${`).
//! - `--set a.b=value` overrides a key after the file is read; the value is parsed as YAML.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::error::config_error;

/// A whole pipeline: where the text comes from, how it is embedded, where vectors go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    pub source: SourceSpec,
    pub embed: EmbedSpec,
    pub sink: SinkSpec,
    /// Object-store settings for `s3://` paths.
    #[serde(default)]
    pub storage: StorageSpec,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Spec>,
}

/// Per-pipeline overrides of the AWS environment for `s3://` paths. Credentials come from the
/// environment only (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web
/// identity), never from the pipeline file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Spec {
    /// S3-compatible endpoint, e.g. `http://127.0.0.1:9000`; default `$AWS_ENDPOINT_URL_S3`,
    /// then `$AWS_ENDPOINT_URL`, then AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Default `$AWS_REGION`, then `$AWS_DEFAULT_REGION`, then `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow plain http (default: only when the endpoint is an `http://` URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_http: Option<bool>,
    /// Path-style addressing (`endpoint/bucket/key`, the default) rather than virtual-hosted
    /// (`bucket.endpoint/key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Public buckets: send unsigned requests, no credentials needed.
    #[serde(default)]
    pub anonymous: bool,
    /// Allow credentials from the EC2/ECS instance metadata service when the environment has
    /// none (off by default, so a missing key is an error rather than a long wait).
    #[serde(default)]
    pub instance_metadata: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Table name → location. Each becomes a table in the SQL context.
    pub tables: BTreeMap<String, TableSpec>,
    /// Optional SQL over the tables; without it the pipeline reads its single table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// A file, a directory or a glob.
    pub path: String,
    /// File format; guessed from the extension when absent (default Parquet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TableFormat>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Csv,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedSpec {
    /// A model folder, a name in the local model cache, or a Hugging Face id.
    pub model: String,
    /// Column holding the text.
    #[serde(default = "default_text")]
    pub text: String,
    /// Column holding the id; when absent the id is a stable hash of `key` (or of the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Columns whose values, hashed together, make the id when there is no id column, so a
    /// re-run overwrites instead of duplicating. Default: the text column.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key: Vec<String>,
    /// Micro-batch budget in tokens (rows x longest row of the micro-batch). Default: 768 on
    /// CPU, where small batches keep activations in cache; 16384 on CUDA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_tokens: Option<usize>,
    /// Upper bound on rows in one micro-batch.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Override the model's max_seq_length (word pieces, counting [CLS] and [SEP]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_seq_length: Option<usize>,
    /// ONNX Runtime intra-op threads; default: all cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Path of libonnxruntime.so; default: ORT_DYLIB_PATH, then the setup's install.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnxruntime: Option<PathBuf>,
    /// Numeric precision of the model: fp32 (default, exact), int8 (CPU, quantised once and
    /// cached) or fp16 (CUDA).
    #[serde(default)]
    pub precision: Precision,
    /// Where inference runs: `cpu` (default), `cuda`, `cuda:N` or `cuda:0,1` (one session per GPU).
    #[serde(default)]
    pub device: Device,
}

/// Numeric precision of the model that runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The model as given.
    #[default]
    Fp32,
    /// 8-bit weights, activations quantised per row block (ONNX Runtime MatMulNBits, VNNI).
    Int8,
    /// Half precision weights and activations, for GPUs.
    Fp16,
}

impl Precision {
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8 => "int8",
            Precision::Fp16 => "fp16",
        }
    }
}

/// Where inference runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA devices by ordinal; each gets its own session.
    Cuda(Vec<u32>),
}

impl Device {
    /// Micro-batch token budget that suits the device.
    pub fn default_batch_tokens(&self) -> usize {
        match self {
            Device::Cpu => 768,
            Device::Cuda(_) => 16384,
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(ids) => {
                let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                write!(f, "cuda:{}", ids.join(","))
            }
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("cpu") {
            return Ok(Device::Cpu);
        }
        if s.eq_ignore_ascii_case("cuda") {
            return Ok(Device::Cuda(vec![0]));
        }
        let bad = || format!("invalid device `{s}`: expected cpu, cuda, cuda:N or cuda:0,1");
        let rest = s
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("cuda:"))
            .map(|_| &s[5..])
            .ok_or_else(bad)?;
        let mut ids = Vec::new();
        for part in rest.split(',') {
            let id: u32 = part.trim().parse().map_err(|_| bad())?;
            if ids.contains(&id) {
                return Err(format!("invalid device `{s}`: cuda:{id} is listed twice"));
            }
            ids.push(id);
        }
        Ok(Device::Cuda(ids))
    }
}

impl Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let s = match v {
            Value::String(s) => s,
            Value::Number(n) => format!("cuda:{n}"),
            other => {
                let got = match other {
                    Value::Sequence(_) => "a list",
                    Value::Mapping(_) => "a mapping",
                    Value::Bool(_) => "a boolean",
                    Value::Null => "nothing",
                    _ => "another kind of value",
                };
                return Err(serde::de::Error::custom(format!(
                    "invalid device: expected cpu, cuda, cuda:N or cuda:0,1, got {got}"
                )));
            }
        };
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_text() -> String {
    "text".into()
}
fn default_batch_rows() -> usize {
    256
}

/// Where vectors go: exactly one of the keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parquet: Option<ParquetSinkSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinecone: Option<PineconeSinkSpec>,
}

/// The configured sink, once validated to be exactly one.
#[derive(Debug, Clone, Copy)]
pub enum SinkKind<'a> {
    Parquet(&'a ParquetSinkSpec),
    Pinecone(&'a PineconeSinkSpec),
}

impl SinkSpec {
    /// The one sink the pipeline names.
    pub fn kind(&self) -> Result<SinkKind<'_>> {
        match (&self.parquet, &self.pinecone) {
            (Some(p), None) => Ok(SinkKind::Parquet(p)),
            (None, Some(p)) => Ok(SinkKind::Pinecone(p)),
            (Some(_), Some(_)) => Err(config_error(
                "sink: name one sink, not both parquet and pinecone (run the pipeline twice, once with --set for each)",
            )),
            (None, None) => Err(config_error(
                "sink: name one sink, e.g. sink: { parquet: { path: out/vectors } } or sink: { pinecone: { index: docs } }",
            )),
        }
    }

    /// The Parquet sink's settings (an error when the pipeline writes elsewhere).
    pub fn parquet(&self) -> Result<&ParquetSinkSpec> {
        match self.kind()? {
            SinkKind::Parquet(p) => Ok(p),
            SinkKind::Pinecone(_) => Err(config_error(
                "this command needs a Parquet sink, but the pipeline writes to Pinecone",
            )),
        }
    }
}

/// A secret read from the pipeline or the environment. It never prints: `Debug`, `Display` and
/// serialization show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Secret, D::Error> {
        Ok(Secret::new(String::deserialize(d)?))
    }
}

impl Secret {
    pub fn new(value: String) -> Secret {
        crate::error::register_secret(&value);
        Secret(value)
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
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
    #[serde(default = "default_pinecone_batch_size")]
    pub batch_size: usize,
    /// Upper bound on serialized bytes per upsert request (at most 2 MB).
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Upper bound on upsert requests in flight; the writer adapts below it.
    #[serde(default = "default_pinecone_concurrency")]
    pub concurrency: usize,
    /// Retries of one request (429, 5xx, timeouts, dropped connections) before its rows go to
    /// the dead-letter file.
    #[serde(default = "default_max_retries")]
    pub max_retries: usize,
    /// Timeout of one HTTP request, in seconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_secs: u64,
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
}

/// Pinecone's documented limits.
pub mod pinecone_limits {
    pub const MAX_BATCH: usize = 1000;
    pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
    pub const MAX_METADATA_BYTES: usize = 40 * 1024;
    pub const MAX_ID_BYTES: usize = 512;
    pub const MAX_CONCURRENCY: usize = 256;
}

fn default_pinecone_batch_size() -> usize {
    200
}
fn default_max_request_bytes() -> usize {
    2_000_000
}
fn default_pinecone_concurrency() -> usize {
    16
}
fn default_max_retries() -> usize {
    8
}
fn default_request_timeout() -> u64 {
    30
}

impl PineconeSinkSpec {
    fn validate(&self) -> Result<()> {
        use pinecone_limits::*;
        if self.index.trim().is_empty() {
            return Err(config_error("sink.pinecone.index is empty"));
        }
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(config_error(format!(
                "sink.pinecone.batch_size must be 1 to {MAX_BATCH} (Pinecone's limit per upsert), got {}",
                self.batch_size
            )));
        }
        if !(64 * 1024..=MAX_REQUEST_BYTES).contains(&self.max_request_bytes) {
            return Err(config_error(format!(
                "sink.pinecone.max_request_bytes must be 65536 to {MAX_REQUEST_BYTES} (Pinecone's 2 MB limit), got {}",
                self.max_request_bytes
            )));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(config_error(format!(
                "sink.pinecone.concurrency must be 1 to {MAX_CONCURRENCY}, got {}",
                self.concurrency
            )));
        }
        if self.request_timeout_secs == 0 {
            return Err(config_error(
                "sink.pinecone.request_timeout_secs must be at least 1",
            ));
        }
        if let Some(ns) = &self.namespace
            && (ns.len() > 512 || !ns.is_ascii())
        {
            return Err(config_error(
                "sink.pinecone.namespace must be at most 512 ASCII characters",
            ));
        }
        match (self.oversized_metadata, &self.truncate_field) {
            (OversizedMetadata::Truncate, None) => {
                return Err(config_error(
                    "sink.pinecone.oversized_metadata is truncate: name the text field to cut with truncate_field",
                ));
            }
            (OversizedMetadata::Truncate, Some(f)) if !self.metadata.contains(f) => {
                return Err(config_error(format!(
                    "sink.pinecone.truncate_field `{f}` is not one of the metadata columns {:?}",
                    self.metadata
                )));
            }
            _ => {}
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// Output directory (vectors land in `part-0.parquet`) or a `.parquet` file path.
    pub path: String,
    /// Rows per Parquet row group: bounds the writer's memory.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

fn default_row_group_rows() -> usize {
    8192
}

impl Pipeline {
    /// Reads, substitutes, parses and validates a pipeline file, then applies `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Pipeline> {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            config_error(format!("cannot read pipeline file {}: {e}", path.display()))
        })?;
        // Relative paths in the file are relative to the working directory, as on the command line.
        Self::parse(&raw, overrides).map_err(|e| e.context(format!("pipeline {}", path.display())))
    }

    /// Parses pipeline text (already read) with overrides; relative paths stay as written.
    pub fn parse(raw: &str, overrides: &[String]) -> Result<Pipeline> {
        let text = substitute_env(raw)?;
        let file_result: std::result::Result<Pipeline, _> = serde_yaml_ng::from_str(&text);
        let pipeline = if overrides.is_empty() {
            file_result.map_err(|e| config_error(describe_yaml_error(&e)))?
        } else {
            let mut value: Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| config_error(describe_yaml_error(&e)))?;
            for o in overrides {
                apply_override(&mut value, o)?;
            }
            match serde_yaml_ng::from_value::<Pipeline>(value) {
                Ok(p) => p,
                Err(e) => {
                    // Prefer the file's own error (it has a line number) when the file is at fault.
                    if let Err(fe) = file_result {
                        return Err(config_error(describe_yaml_error(&fe)));
                    }
                    return Err(config_error(format!(
                        "after --set overrides: {}",
                        describe_yaml_error(&e)
                    )));
                }
            }
        };
        pipeline.validate()?;
        Ok(pipeline)
    }

    fn validate(&self) -> Result<()> {
        if self.source.tables.is_empty() {
            return Err(config_error(
                "source.tables is empty: name at least one table",
            ));
        }
        if self.source.sql.is_none() && self.source.tables.len() > 1 {
            return Err(config_error(
                "source.sql is required when source.tables names more than one table",
            ));
        }
        for (name, t) in &self.source.tables {
            if t.path.trim().is_empty() {
                return Err(config_error(format!("source.tables.{name}.path is empty")));
            }
        }
        if self.embed.batch_tokens == Some(0) {
            return Err(config_error("embed.batch_tokens must be at least 1"));
        }
        if self.embed.batch_rows == 0 {
            return Err(config_error("embed.batch_rows must be at least 1"));
        }
        if self.embed.threads == Some(0) {
            return Err(config_error("embed.threads must be at least 1"));
        }
        if self.embed.precision == Precision::Fp16 && self.embed.device == Device::Cpu {
            return Err(config_error(
                "embed.precision fp16 runs on GPUs only: set embed.device to cuda, or use fp32 or int8 on CPU",
            ));
        }
        if self.embed.precision == Precision::Int8 && self.embed.device != Device::Cpu {
            return Err(config_error(
                "embed.precision int8 is for CPUs (VNNI); on CUDA use fp16",
            ));
        }
        if self.embed.max_seq_length == Some(0) {
            return Err(config_error("embed.max_seq_length must be at least 1"));
        }
        if self.embed.id.is_some() && !self.embed.key.is_empty() {
            return Err(config_error(
                "embed.id and embed.key are alternatives: the id is either a column or a hash of key columns",
            ));
        }
        match self.sink.kind()? {
            SinkKind::Parquet(p) => {
                if p.path.trim().is_empty() {
                    return Err(config_error("sink.parquet.path is empty"));
                }
                if p.row_group_rows == 0 {
                    return Err(config_error(
                        "sink.parquet.row_group_rows must be at least 1",
                    ));
                }
            }
            SinkKind::Pinecone(p) => p.validate()?,
        }
        Ok(())
    }
}

/// Replaces `${VAR}` and `${VAR:-default}` with environment values; `$${` is a literal `${`.
pub fn substitute_env(raw: &str) -> Result<String> {
    let mut out = String::with_capacity(raw.len());
    for (lineno, line) in raw.split_inclusive('\n').enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let end = after.find('}').ok_or_else(|| {
                config_error(format!(
                    "line {}: unterminated `${{` (write `$${{` for a literal)",
                    lineno + 1
                ))
            })?;
            let inner = &after[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if !valid {
                return Err(config_error(format!(
                    "line {}: `${{{inner}}}` is not a valid variable reference",
                    lineno + 1
                )));
            }
            match (std::env::var(name), default) {
                (Ok(v), None) => out.push_str(&v),
                (Ok(v), Some(_)) if !v.is_empty() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (Err(_), None) => {
                    return Err(config_error(format!(
                        "line {}: environment variable {name} is not set (use ${{{name}:-default}} for a default)",
                        lineno + 1
                    )));
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Applies one `key.path=value` override to a YAML tree.
fn apply_override(root: &mut Value, spec: &str) -> Result<()> {
    let (key, raw_value) = spec.split_once('=').ok_or_else(|| {
        config_error(format!(
            "invalid --set `{spec}`: expected KEY=VALUE, e.g. embed.batch_tokens=4096"
        ))
    })?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(|p| p.is_empty()) {
        return Err(config_error(format!(
            "invalid --set `{spec}`: the key must be a dotted path such as embed.batch_tokens"
        )));
    }
    let value: Value = if raw_value.is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw_value).map_err(|e| {
            config_error(format!(
                "invalid --set `{spec}`: the value is not valid YAML: {e}"
            ))
        })?
    };
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if !node.is_mapping() {
            if node.is_null() {
                *node = Value::Mapping(Default::default());
            } else {
                return Err(config_error(format!(
                    "invalid --set `{spec}`: `{}` is not a mapping",
                    parts[..i].join(".")
                )));
            }
        }
        let map = node.as_mapping_mut().expect("checked mapping");
        let k = Value::String((*part).to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

/// Turns serde's message into one line, adding "did you mean" for misspelt keys.
fn describe_yaml_error(e: &serde_yaml_ng::Error) -> String {
    let msg = e.to_string();
    let mut out = msg.clone();
    if let Some(suggestion) = suggest_key(&msg) {
        out.push_str(&format!(" (did you mean `{suggestion}`?)"));
    }
    out.replace('\n', " ")
}

/// From "unknown field `x`, expected one of `a`, `b`" picks the expected name closest to x.
fn suggest_key(msg: &str) -> Option<String> {
    let rest = msg
        .split_once("unknown field `")
        .or_else(|| msg.split_once("unknown variant `"))?
        .1;
    let (unknown, expected) = rest.split_once('`')?;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    names
        .into_iter()
        .map(|n| (strsim::normalized_damerau_levenshtein(unknown, n), n))
        .filter(|(score, _)| *score >= 0.5)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, n)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "source:\n  tables:\n    docs: { path: data/sample.parquet }\nembed:\n  model: m\nsink:\n  parquet: { path: out/x }\n";

    #[test]
    fn parses_defaults() {
        let p = Pipeline::parse(BASE, &[]).unwrap();
        assert_eq!(p.embed.text, "text");
        assert_eq!(p.embed.batch_tokens, None);
        assert_eq!(p.embed.precision, Precision::Fp32);
        assert_eq!(p.embed.device, Device::Cpu);
        assert!(p.embed.id.is_none());
    }

    #[test]
    fn parses_device_and_precision() {
        let with = |extra: &str| {
            Pipeline::parse(
                &BASE.replace("  model: m\n", &format!("  model: m\n{extra}")),
                &[],
            )
        };
        let p = with("  device: cuda\n  precision: fp16\n").unwrap();
        assert_eq!(p.embed.device, Device::Cuda(vec![0]));
        assert_eq!(p.embed.device.default_batch_tokens(), 16384);
        let p = with("  device: cuda:0,1\n").unwrap();
        assert_eq!(p.embed.device, Device::Cuda(vec![0, 1]));
        assert_eq!(p.embed.device.to_string(), "cuda:0,1");
        let p = with("  precision: int8\n").unwrap();
        assert_eq!(p.embed.precision, Precision::Int8);
        let e = with("  device: gpu\n").unwrap_err().to_string();
        assert!(e.contains("invalid device `gpu`"), "{e}");
        let e = with("  device: cuda:1,1\n").unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
        let e = with("  precision: fp16\n").unwrap_err().to_string();
        assert!(e.contains("GPUs only"), "{e}");
        let e = with("  precision: int4\n").unwrap_err().to_string();
        assert!(e.contains("int4"), "{e}");
    }

    #[test]
    fn unknown_key_names_line_and_suggestion() {
        let y = BASE.replace("  model: m\n", "  model: m\n  batch_tokenz: 5\n");
        let e = Pipeline::parse(&y, &[]).unwrap_err().to_string();
        assert!(e.contains("batch_tokenz"), "{e}");
        assert!(e.contains("line 6"), "{e}");
        assert!(e.contains("did you mean `batch_tokens`"), "{e}");
    }

    #[test]
    fn set_overrides_and_types() {
        let p = Pipeline::parse(BASE, &["embed.batch_tokens=4096".into()]).unwrap();
        assert_eq!(p.embed.batch_tokens, Some(4096));
        let e = Pipeline::parse(BASE, &["embed.batch_tokens".into()]).unwrap_err();
        assert!(e.to_string().contains("expected KEY=VALUE"), "{e}");
        let e = Pipeline::parse(BASE, &["embed.batch_tokens=lots".into()]).unwrap_err();
        assert!(e.to_string().contains("--set"), "{e}");
        let e = Pipeline::parse(BASE, &["embed.modle=x".into()]).unwrap_err();
        assert!(e.to_string().contains("did you mean `model`"), "{e}");
    }

    #[test]
    fn env_substitution() {
        // SAFETY: tests in this module do not read this variable concurrently.
        unsafe { std::env::set_var("EMBEDFLOW_TEST_MODEL", "from-env") };
        let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_MODEL}");
        assert_eq!(Pipeline::parse(&y, &[]).unwrap().embed.model, "from-env");
        let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_UNSET_VAR:-fallback}");
        assert_eq!(Pipeline::parse(&y, &[]).unwrap().embed.model, "fallback");
        let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_UNSET_VAR}");
        let e = Pipeline::parse(&y, &[]).unwrap_err().to_string();
        assert!(
            e.contains("EMBEDFLOW_TEST_UNSET_VAR") && e.contains("line 5"),
            "{e}"
        );
        assert_eq!(substitute_env("a $${X} b").unwrap(), "a ${X} b");
    }
}
