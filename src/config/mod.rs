//! The pipeline file: each stage's spec, parsed strictly from YAML.
//!
//! Parsing is its own small modules; each stage owns its spec and its checks:
//! [`crate::plan::source::SourceSpec`], [`crate::embed::EmbedSpec`], [`crate::sink::SinkSpec`]
//! and [`crate::storage::StorageSpec`].
//!
//! 1. The file is parsed as YAML (syntax errors name the line).
//! 2. `${VAR}` is replaced inside scalar values only ([`vars`]): a variable can never add keys.
//! 3. `--set a.b=value` overrides apply ([`overrides`]).
//! 4. The tree becomes the typed [`Pipeline`]; unknown keys are errors naming the key, its line
//!    and the closest real key ([`diagnose`]); an error caused by a variable or an override
//!    names it.

mod diagnose;
mod overrides;
mod vars;

use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

pub use crate::secret::Secret;
pub use vars::substitute_text;

use crate::embed::spec::EmbedSpec;
use crate::error::{ConfigError, config_error, invalid};
use crate::incremental::config::IncrementalSpec;
use crate::plan::source::SourceSpec;
use crate::sink::SinkSpec;
use crate::storage::StorageSpec;

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
    /// Embed only what changed since the last run, and resume after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalSpec>,
}

/// Where a value came from when not from the file as written: a key path and its origin.
#[derive(Debug, Default)]
struct Origins(Vec<(Vec<String>, String)>);

impl Origins {
    fn add(&mut self, path: Vec<String>, origin: String) {
        self.0.retain(|(p, _)| !p.starts_with(&path));
        self.0.push((path, origin));
    }

    /// The origin of `path` or of a key above it.
    fn of(&self, path: &[String]) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(p, _)| path.starts_with(p))
            .map(|(_, o)| o.as_str())
    }

    /// The origin of a dotted key (`sink.parquet.path`).
    fn of_key(&self, key: &str) -> Option<&str> {
        let path: Vec<String> = key.split('.').map(str::to_string).collect();
        self.of(&path)
    }
}

impl Pipeline {
    /// What the plan stage reads: the source, the embedding's columns and the storage settings.
    pub fn plan_spec(&self) -> crate::plan::PlanSpec<'_> {
        crate::plan::PlanSpec {
            source: &self.source,
            embed: &self.embed,
            storage: &self.storage,
        }
    }

    /// Reads, parses and validates a pipeline file with `--set` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Pipeline> {
        let raw = std::fs::read_to_string(path).map_err(|e| {
            config_error(format!("cannot read pipeline file {}: {e}", path.display()))
        })?;
        // Relative paths in the file are relative to the working directory, as on the command line.
        Self::parse(&raw, overrides).map_err(|e| e.context(format!("pipeline {}", path.display())))
    }

    /// Parses pipeline text (already read) with overrides; relative paths stay as written.
    pub fn parse(raw: &str, overrides: &[String]) -> Result<Pipeline> {
        let (protected, refs) = vars::References::protect(raw)?;
        let mut value: Value = serde_yaml_ng::from_str(&protected)
            .map_err(|e| config_error(refs.restore(&diagnose::yaml_error(&e))))?;
        if value.is_null() {
            return Err(config_error(
                "the pipeline is empty: it needs source, embed and sink",
            ));
        }
        let mut origins = Origins::default();
        vars::substitute(&mut value, &refs, &mut origins)?;
        for o in overrides {
            overrides::apply(&mut value, o, &mut origins)?;
        }
        let mut pipeline: Pipeline = diagnose::deserialize(value, raw, &origins)?;
        pipeline.default_sparse_params();
        pipeline.validate().map_err(|mut e| {
            if e.origin.is_none() {
                e.origin = e
                    .key
                    .as_deref()
                    .and_then(|k| origins.of_key(k))
                    .map(str::to_string);
            }
            anyhow::Error::new(e)
        })?;
        Ok(pipeline)
    }

    /// `embed.sparse` without `params`: the fitted parameters go beside a Parquet output
    /// (`<path>.bm25.json`), else into the incremental state folder (`bm25.json`).
    fn default_sparse_params(&mut self) {
        let Some(sparse) = self.embed.sparse.as_mut() else {
            return;
        };
        if sparse.params.is_some() {
            return;
        }
        sparse.params = match (&self.sink.parquet, &self.incremental) {
            (Some(p), _) => Some(format!("{}.bm25.json", p.path.trim_end_matches('/'))),
            (None, Some(inc)) => Some(format!("{}/bm25.json", inc.state.trim_end_matches('/'))),
            (None, None) => None,
        };
    }

    fn validate(&self) -> std::result::Result<(), ConfigError> {
        self.source.validate()?;
        self.embed.validate()?;
        if self
            .embed
            .sparse
            .as_ref()
            .is_some_and(|s| s.params.is_none())
        {
            return Err(invalid(
                "embed.sparse.params",
                "name the file the fitted BM25 parameters go to (queries and later runs read it); beside a Parquet output or in an incremental state folder it has a default",
            ));
        }
        self.sink.validate()?;
        if let Some(inc) = &self.incremental {
            inc.validate()?;
            if self.embed.duplicate_ids == crate::embed::DuplicateIds::KeepLast {
                return Err(invalid(
                    "embed.duplicate_ids",
                    "keep_last cannot be used with incremental: the state keeps one row per id, so the ids must be unique",
                ));
            }
            if let Some(p) = &self.sink.parquet
                && p.is_delta()
                && p.delta_mode() == crate::sink::parquet::config::DeltaMode::Append
            {
                return Err(invalid(
                    "sink.parquet.mode",
                    "append cannot be used with incremental: each run would add another copy of the rows it carries over; use mode: overwrite (each run commits the whole, updated output as a new version)",
                ));
            }
        }
        Ok(())
    }
}
