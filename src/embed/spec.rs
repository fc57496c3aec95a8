//! `embed:` in the pipeline: which model, which columns, how inference runs. One struct is both
//! the YAML spec and what [`super::Embedder::load`] takes, so each default lives in one place.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::error::{ConfigError, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedSpec {
    /// A model folder, a name in the local model cache, or a Hugging Face id. Not needed with
    /// `vector`.
    #[serde(default)]
    pub model: String,
    /// A column that already holds vectors (e.g. a previous output's `vector`): they are sent
    /// as they are, and nothing is embedded. Instead of `model` and `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
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
    /// What to do when two rows share an id: `error` (default, before anything is written) or
    /// `keep_last` (the sink keeps one vector per id: the later row overwrites the earlier).
    #[serde(default)]
    pub duplicate_ids: DuplicateIds,
    /// Split long texts into token-bounded chunks, one output row each (`<id>#<n>`); without
    /// it, a text is cut at `max_seq_length`, as sentence-transformers does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunking: Option<super::chunk::spec::ChunkingSpec>,
    /// Micro-batch budget in tokens (rows x longest row of the micro-batch). Default: the
    /// device's ([`Device::default_batch_tokens`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_tokens: Option<usize>,
    /// Upper bound on rows in one micro-batch.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Override the model's max_seq_length (word pieces, counting [CLS] and [SEP]); at most the
    /// model's `max_position_embeddings`.
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
    /// Where inference runs: `cpu` (default), `cuda`, `cuda:N` or `cuda:0,1` (two sessions per GPU).
    #[serde(default)]
    pub device: Device,
    /// Text put before every row's text (e.g. `"passage: "`), instead of the model's own
    /// document prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// A prompt of the model's `config_sentence_transformers.json` by name, for the rows
    /// (e.g. `passage` for E5, `document` for nomic-embed). Default, as sentence-transformers'
    /// `encode()`: the model's `default_prompt_name`, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_name: Option<String>,
    /// Text put before a query (`query`, `vector_search`, `embed()` in a query's SQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_prompt: Option<String>,
    /// A prompt of the model by name, for queries. Default, as `encode_query()`: the model's
    /// `query` prompt, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_prompt_name: Option<String>,
    /// Keep the first N dimensions of each vector (Matryoshka models; sentence-transformers'
    /// `truncate_dim`), re-normalised when the model's vectors are normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<usize>,
    /// Sparse vectors beside the dense ones (`bm25`), for hybrid search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sparse: Option<super::bm25::spec::SparseSpec>,
}

fn default_text() -> String {
    "text".into()
}

fn default_batch_rows() -> usize {
    256
}

impl EmbedSpec {
    /// The spec of `model` with every other setting at its default (the same defaults as YAML).
    pub fn new(model: impl Into<String>) -> EmbedSpec {
        EmbedSpec {
            model: model.into(),
            vector: None,
            text: default_text(),
            id: None,
            key: Vec::new(),
            duplicate_ids: DuplicateIds::default(),
            chunking: None,
            batch_tokens: None,
            batch_rows: default_batch_rows(),
            max_seq_length: None,
            threads: None,
            onnxruntime: None,
            precision: Precision::default(),
            device: Device::default(),
            prompt: None,
            prompt_name: None,
            query_prompt: None,
            query_prompt_name: None,
            dimensions: None,
            sparse: None,
        }
    }

    /// The micro-batch token budget in force.
    pub fn batch_tokens(&self) -> usize {
        self.batch_tokens
            .unwrap_or_else(|| self.device.default_batch_tokens())
            .max(1)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.vector, self.model.trim().is_empty()) {
            (None, true) => {
                return Err(invalid(
                    "embed.model",
                    "name a model (e.g. model: all-MiniLM-L6-v2), or give embed.vector: a column that already holds vectors",
                ));
            }
            (Some(_), _) if self.chunking.is_some() => {
                return Err(invalid(
                    "embed.chunking",
                    "embed.vector sends vectors that exist already: there is no text to chunk",
                ));
            }
            _ => {}
        }
        if self.batch_tokens == Some(0) {
            return Err(invalid("embed.batch_tokens", "must be at least 1"));
        }
        if self.batch_rows == 0 {
            return Err(invalid("embed.batch_rows", "must be at least 1"));
        }
        if self.threads == Some(0) {
            return Err(invalid("embed.threads", "must be at least 1"));
        }
        if self.max_seq_length == Some(0) {
            return Err(invalid("embed.max_seq_length", "must be at least 1"));
        }
        if self.precision == Precision::Fp16 && self.device == Device::Cpu {
            return Err(invalid(
                "embed.precision",
                "fp16 runs on GPUs only: set embed.device to cuda, or use fp32 or int8 on CPU",
            ));
        }
        if self.precision == Precision::Int8 && self.device != Device::Cpu {
            return Err(invalid(
                "embed.precision",
                "int8 is for CPUs (VNNI); on CUDA use fp16",
            ));
        }
        if let Some(c) = &self.chunking {
            c.validate()?;
        }
        for (literal, name, key) in [
            (&self.prompt, &self.prompt_name, "embed.prompt"),
            (
                &self.query_prompt,
                &self.query_prompt_name,
                "embed.query_prompt",
            ),
        ] {
            if literal.is_some() && name.is_some() {
                return Err(invalid(
                    key,
                    format!(
                        "{key} (a text) and {key}_name (one of the model's prompts) are alternatives: give one"
                    ),
                ));
            }
        }
        if self.vector.is_some()
            && (self.prompt.is_some() || self.prompt_name.is_some() || self.dimensions.is_some())
        {
            return Err(invalid(
                "embed.vector",
                "the vectors exist already: embed.prompt, embed.prompt_name and embed.dimensions shape vectors a model makes",
            ));
        }
        if let Some(sparse) = &self.sparse {
            if self.vector.is_some() {
                return Err(invalid(
                    "embed.sparse",
                    "with embed.vector nothing is embedded from the text; sparse vectors come from the text a model embeds",
                ));
            }
            sparse.validate()?;
        }
        if self.dimensions == Some(0) {
            return Err(invalid("embed.dimensions", "must be at least 1"));
        }
        if self.id.is_some() && !self.key.is_empty() {
            return Err(invalid(
                "embed.id",
                "embed.id and embed.key are alternatives: the id is either a column or a hash of key columns",
            ));
        }
        Ok(())
    }
}

/// What to do when two source rows share an id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicateIds {
    /// Fail before anything is written, naming an example id and the count.
    #[default]
    Error,
    /// Write them all: a Pinecone index keeps one vector per id (the one upserted last), a
    /// Parquet output keeps every row. The summary counts what the sink holds.
    KeepLast,
}

/// Numeric precision of the model that runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The model as given.
    #[default]
    Fp32,
    /// Smoothed dynamic int8 (VNNI) with fp32 outlier channels; see `prepare_model.py`.
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
    /// CUDA devices by ordinal; each gets its own sessions.
    Cuda(Vec<u32>),
}

impl Device {
    /// Micro-batch token budget that suits the device: small on CPU, where small batches keep
    /// activations in cache; large on GPUs.
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
