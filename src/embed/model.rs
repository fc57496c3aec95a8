//! Resolving a model name to a folder and reading its sentence-transformers configuration.
//!
//! A model is a folder with `model.onnx` (or `onnx/model.onnx`) and `tokenizer.json`, plus, when
//! present, `sentence_bert_config.json` (max_seq_length), `modules.json` (pooling folder,
//! Normalize) and `1_Pooling/config.json` (pooling mode).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::runtime::embedflow_home;

/// Files and settings of one resolved model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What the user wrote (`all-MiniLM-L6-v2`, a path, or `org/name`).
    pub name: String,
    pub dir: PathBuf,
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub settings: ModelSettings,
}

/// How sentence-transformers would use the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSettings {
    pub max_seq_length: usize,
    /// The longest input the model's position embeddings allow (`config.json`), when known.
    pub max_positions: Option<usize>,
    pub pooling: Pooling,
    pub normalize: bool,
    /// `prompts` of `config_sentence_transformers.json`: name -> text put before the input.
    pub prompts: std::collections::BTreeMap<String, String>,
    /// `default_prompt_name` of `config_sentence_transformers.json`.
    pub default_prompt_name: Option<String>,
    /// The pooling's `include_prompt` (default true): false leaves a prompt's tokens out of
    /// the pooled tokens, as sentence-transformers does for instruction models.
    pub include_prompt: bool,
    /// The tokenizer pads on the left (`padding_side: left` in `tokenizer_config.json`), as
    /// decoder models pooled at their last token expect.
    pub pad_left: bool,
}

impl ModelSettings {
    /// The settings sentence-transformers assumes for a folder without its files.
    pub fn plain(max_seq_length: usize) -> ModelSettings {
        ModelSettings {
            max_seq_length,
            max_positions: None,
            pooling: Pooling::Mean,
            normalize: false,
            prompts: Default::default(),
            default_prompt_name: None,
            include_prompt: true,
            pad_left: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    /// The last token of each input (decoder models: Qwen3-Embedding, e5-mistral, ...).
    LastToken,
    /// Mean weighted by position (1 for the first token, 2 for the second, ...).
    WeightedMean,
    /// Sum divided by the square root of the token count.
    MeanSqrtLen,
}

impl Pooling {
    /// sentence-transformers' name of a pooling mode.
    fn named(mode: &str) -> Option<Pooling> {
        Some(match mode {
            "cls" => Pooling::Cls,
            "max" => Pooling::Max,
            "mean" => Pooling::Mean,
            "mean_sqrt_len_tokens" => Pooling::MeanSqrtLen,
            "weightedmean" => Pooling::WeightedMean,
            "lasttoken" => Pooling::LastToken,
            _ => return None,
        })
    }
}

/// The local model cache: `$EMBEDFLOW_HOME/models` (see [`embedflow_home`]).
pub fn model_cache_dir() -> PathBuf {
    embedflow_home().join("models")
}

const SETUP_HINT: &str = "run `bash scripts/setup.sh` to install the offline default all-MiniLM-L6-v2 \
into the local model cache, or set embed.model to a folder holding model.onnx and tokenizer.json";

/// Resolves `model` (a folder, a cache name or a Hugging Face id) to its files.
pub fn resolve(model: &str) -> Result<ModelFiles> {
    let as_path = Path::new(model);
    let dir = if as_path.is_dir() {
        as_path.to_path_buf()
    } else if !model.contains('/') && model_cache_dir().join(model).is_dir() {
        model_cache_dir().join(model)
    } else if looks_like_hub_id(model) && !as_path.exists() {
        hub::download(model)?
    } else if as_path.exists() {
        bail!(
            "model {model}: not a folder (expected a folder holding model.onnx and tokenizer.json)"
        )
    } else {
        bail!(
            "model `{model}` not found: not a folder, not in the local model cache ({}), not a Hugging Face id (org/name); {SETUP_HINT}",
            model_cache_dir().display()
        )
    };
    load_folder(model, &dir)
}

pub fn looks_like_hub_id(model: &str) -> bool {
    let parts: Vec<&str> = model.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Reads a model folder's files and settings.
pub fn load_folder(name: &str, dir: &Path) -> Result<ModelFiles> {
    let onnx = ["model.onnx", "onnx/model.onnx"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "model {name}: no model.onnx or onnx/model.onnx in {}; {SETUP_HINT}",
                dir.display()
            )
        })?;
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        bail!("model {name}: no tokenizer.json in {}", dir.display());
    }
    let settings = read_settings(dir).with_context(|| format!("model {name}"))?;
    Ok(ModelFiles {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        onnx,
        tokenizer,
        settings,
    })
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    /// sentence-transformers 5.4+: `"mean"`, or a list of modes.
    #[serde(default)]
    pooling_mode: Option<serde_json::Value>,
    #[serde(default = "yes")]
    include_prompt: bool,
}

impl PoolingConfig {
    /// The one pooling mode configured (the modes in sentence-transformers' order).
    fn mode(&self, file: &Path) -> Result<Pooling> {
        let modes: Vec<String> = match &self.pooling_mode {
            Some(serde_json::Value::String(m)) => vec![m.clone()],
            Some(serde_json::Value::Array(ms)) => ms
                .iter()
                .map(|m| m.as_str().unwrap_or_default().to_string())
                .collect(),
            Some(other) => bail!("{}: pooling_mode {other} is not a mode", file.display()),
            None => [
                (self.pooling_mode_cls_token, "cls"),
                (self.pooling_mode_max_tokens, "max"),
                (self.pooling_mode_mean_tokens, "mean"),
                (
                    self.pooling_mode_mean_sqrt_len_tokens,
                    "mean_sqrt_len_tokens",
                ),
                (self.pooling_mode_weightedmean_tokens, "weightedmean"),
                (self.pooling_mode_lasttoken, "lasttoken"),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, m)| m.to_string())
            .collect(),
        };
        match modes.as_slice() {
            [] => Ok(Pooling::Mean),
            [one] => Pooling::named(one)
                .with_context(|| format!("{}: unknown pooling mode `{one}`", file.display())),
            many => bail!(
                "{}: pooling modes {} together (their vectors concatenated) are not supported; embedflow pools with one mode",
                file.display(),
                many.join(" + ")
            ),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default)]
struct SentenceTransformersConfig {
    #[serde(default)]
    prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    default_prompt_name: Option<String>,
}

#[derive(Deserialize, Default)]
struct TokenizerConfig {
    #[serde(default)]
    padding_side: Option<String>,
}

#[derive(Deserialize)]
struct TransformerConfig {
    max_position_embeddings: Option<usize>,
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("invalid JSON in {}", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// sentence-transformers' settings for a folder; defaults follow sentence-transformers when a
/// file is absent (mean pooling, no normalisation, the model's position limit).
pub fn read_settings(dir: &Path) -> Result<ModelSettings> {
    let modules: Vec<ModuleEntry> = read_json(&dir.join("modules.json"))?.unwrap_or_default();
    let pooling_dir = modules
        .iter()
        .find(|m| m.kind.ends_with("Pooling"))
        .map(|m| dir.join(&m.path))
        .unwrap_or_else(|| dir.join("1_Pooling"));
    let pooling_file = pooling_dir.join("config.json");
    let pooling_cfg: PoolingConfig = read_json(&pooling_file)?.unwrap_or(PoolingConfig {
        include_prompt: true,
        ..PoolingConfig::default()
    });
    let pooling = pooling_cfg.mode(&pooling_file)?;
    let st: SentenceTransformersConfig =
        read_json(&dir.join("config_sentence_transformers.json"))?.unwrap_or_default();
    if let Some(name) = &st.default_prompt_name
        && !st.prompts.contains_key(name)
    {
        bail!(
            "config_sentence_transformers.json: default_prompt_name `{name}` is not one of its prompts ({})",
            names(&st.prompts)
        );
    }
    let tokenizer_cfg: TokenizerConfig =
        read_json(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
    let normalize = modules.iter().any(|m| m.kind.ends_with("Normalize"));
    let sbert: Option<SentenceBertConfig> = read_json(&dir.join("sentence_bert_config.json"))?;
    let transformer: Option<TransformerConfig> = read_json(&dir.join("config.json"))?;
    let max_positions = transformer.and_then(|t| t.max_position_embeddings);
    let max_seq_length = sbert
        .and_then(|s| s.max_seq_length)
        .or(max_positions)
        .unwrap_or(512);
    Ok(ModelSettings {
        max_seq_length,
        max_positions,
        pooling,
        normalize,
        prompts: st.prompts,
        default_prompt_name: st.default_prompt_name,
        include_prompt: pooling_cfg.include_prompt,
        pad_left: tokenizer_cfg.padding_side.as_deref() == Some("left"),
    })
}

/// The prompts' names, for messages.
pub fn names(prompts: &std::collections::BTreeMap<String, String>) -> String {
    if prompts.is_empty() {
        return "it has none".into();
    }
    prompts.keys().cloned().collect::<Vec<_>>().join(", ")
}

/// Hugging Face hub download (hf-hub), honouring HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE.
mod hub {
    use super::*;

    const FILES: &[&str] = &[
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "modules.json",
        "1_Pooling/config.json",
        "config_sentence_transformers.json",
        "tokenizer_config.json",
    ];

    fn offline() -> bool {
        std::env::var("HF_HUB_OFFLINE")
            .map(|v| {
                matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "1" | "true" | "yes" | "on"
                )
            })
            .unwrap_or(false)
    }

    /// Fetches the model's ONNX export and config files into the hub cache; returns the folder.
    pub fn download(id: &str) -> Result<PathBuf> {
        if offline() {
            return from_cache(id);
        }
        let id_owned = id.to_string();
        // hf-hub's async API needs a runtime; model loading happens outside the query runtime.
        let fetch = move || -> Result<PathBuf> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let api = hf_hub::api::tokio::ApiBuilder::from_env()
                    .with_progress(false)
                    .build()
                    .context("cannot set up the Hugging Face hub client")?;
                let repo = api.model(id_owned.clone());
                let onnx = match repo.get("onnx/model.onnx").await {
                    Ok(p) => p,
                    Err(_) => repo.get("model.onnx").await.with_context(|| {
                        format!("Hugging Face model {id_owned}: no onnx/model.onnx or model.onnx could be downloaded")
                    })?,
                };
                for f in FILES {
                    if let Err(e) = repo.get(f).await {
                        if *f == "tokenizer.json" {
                            return Err(anyhow::anyhow!("Hugging Face model {id_owned}: cannot download tokenizer.json: {e}"));
                        }
                        tracing::debug!("{id_owned}: optional {f} not downloaded: {e}");
                    }
                }
                snapshot_dir(&onnx)
            })
        };
        std::thread::spawn(fetch)
            .join()
            .map_err(|_| anyhow::anyhow!("Hugging Face download of {id} panicked"))?
    }

    fn from_cache(id: &str) -> Result<PathBuf> {
        let cache = hf_hub::Cache::from_env();
        let repo = cache.model(id.to_string());
        let onnx = repo
            .get("onnx/model.onnx")
            .or_else(|| repo.get("model.onnx"))
            .with_context(|| {
                format!("Hugging Face model {id} is not in the hub cache and HF_HUB_OFFLINE is set")
            })?;
        snapshot_dir(&onnx)
    }

    /// The snapshot folder holding a downloaded file (`.../snapshots/<rev>/onnx/model.onnx`).
    fn snapshot_dir(onnx: &Path) -> Result<PathBuf> {
        let parent = onnx.parent().context("downloaded model has no folder")?;
        Ok(if parent.file_name().is_some_and(|n| n == "onnx") {
            parent.parent().unwrap_or(parent).to_path_buf()
        } else {
            parent.to_path_buf()
        })
    }
}
