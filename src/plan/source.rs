//! `source:` in the pipeline: the tables (local or `s3://`; Parquet, CSV, JSON or Delta Lake)
//! and the optional SQL over them.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::prelude::{
    CsvReadOptions, DataFrame, JsonReadOptions, ParquetReadOptions, SessionContext,
};
use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, config_error, invalid, root_cause};
use crate::storage::{self, StorageSpec};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Table name → location. Each becomes a table in the SQL context.
    pub tables: BTreeMap<String, TableSpec>,
    /// Optional SQL over the tables (a query: nothing that writes); without it the pipeline
    /// reads its single table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableSpec {
    /// A file, a directory or a glob.
    pub path: String,
    /// File format; when absent, a folder with a `_delta_log` is a Delta table, and files are
    /// guessed from their extension (default Parquet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TableFormat>,
    /// A Delta table's version to read (default: its latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableFormat {
    Parquet,
    Csv,
    Json,
    Delta,
}

/// A Delta table the plan read, and at which version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaRead {
    /// The table's name in the pipeline.
    pub name: String,
    pub path: String,
    pub version: u64,
    /// Its change data feed is on at that version.
    pub change_feed: bool,
}

impl SourceSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.tables.is_empty() {
            return Err(invalid(
                "source.tables",
                "is empty: name at least one table",
            ));
        }
        if self.sql.is_none() && self.tables.len() > 1 {
            return Err(invalid(
                "source.sql",
                "is required when source.tables names more than one table",
            ));
        }
        for (name, t) in &self.tables {
            if t.path.trim().is_empty() {
                return Err(invalid(&format!("source.tables.{name}.path"), "is empty"));
            }
            if t.version.is_some() && !matches!(t.format, None | Some(TableFormat::Delta)) {
                return Err(invalid(
                    &format!("source.tables.{name}.version"),
                    "is a Delta table's version: set format: delta, or remove it",
                ));
            }
        }
        Ok(())
    }
}

fn table_format(spec: &TableSpec) -> TableFormat {
    if let Some(f) = spec.format {
        return f;
    }
    let lower = spec.path.to_ascii_lowercase();
    if lower.ends_with(".csv") || lower.ends_with(".csv.gz") {
        TableFormat::Csv
    } else if [".json", ".jsonl", ".ndjson"]
        .iter()
        .any(|e| lower.ends_with(e))
    {
        TableFormat::Json
    } else {
        TableFormat::Parquet
    }
}

/// A table location for DataFusion. DataFusion reads globs only in local paths; for `s3://`
/// URLs the glob is split off here the same way (at the folder holding the first glob
/// character).
fn listing_url(path: &str) -> datafusion::error::Result<ListingTableUrl> {
    if !(storage::is_remote(path) && storage::is_glob(path)) {
        return ListingTableUrl::parse(path);
    }
    let first = path.find(['*', '?', '[']).unwrap_or(path.len());
    let split = path[..first].rfind('/').map_or(0, |i| i + 1);
    let (prefix, pattern) = path.split_at(split);
    let url = url::Url::parse(prefix)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let glob = glob::Pattern::new(pattern)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    ListingTableUrl::try_new(url, Some(glob))
}

/// The table's format: as configured, a Delta table when its folder holds a `_delta_log`, else
/// by the file extension.
async fn resolved_format(name: &str, spec: &TableSpec, storage: &StorageSpec) -> TableFormat {
    if spec.format.is_none() && storage::delta::is_delta_table(&spec.path, storage).await {
        tracing::info!(
            "table `{name}` ({}) holds a _delta_log: read as a Delta table",
            spec.path
        );
        return TableFormat::Delta;
    }
    table_format(spec)
}

/// Registers a Delta table at its latest or given version; returns what was read.
async fn register_delta(
    ctx: &SessionContext,
    name: &str,
    spec: &TableSpec,
    storage: &StorageSpec,
) -> Result<DeltaRead> {
    let what = format!("table `{name}`");
    let table = storage::delta::open(&what, &spec.path, storage, spec.version).await?;
    let provider = storage::delta::provider(&what, &spec.path, &table, ctx).await?;
    ctx.register_table(name, provider)?;
    let read = DeltaRead {
        name: name.to_string(),
        path: spec.path.clone(),
        version: storage::delta::version_of(&table),
        change_feed: storage::delta::change_feed_enabled(&table),
    };
    tracing::info!(
        "table `{name}`: Delta version {}{}",
        read.version,
        if read.change_feed {
            ", change data feed on"
        } else {
            ""
        }
    );
    Ok(read)
}

/// Registers one table, naming the table and path in any error; a Delta table says which
/// version was read.
///
/// Local paths and `s3://` URLs alike: a file, a folder (prefix) or a glob. Hive-style
/// `key=value/` folders become partition columns (text).
pub async fn register_table(
    ctx: &SessionContext,
    name: &str,
    spec: &TableSpec,
    storage: &StorageSpec,
) -> Result<Option<DeltaRead>> {
    storage::check_local_source(name, &spec.path)?;
    let store = storage::register_store(ctx, &format!("table `{name}`"), &spec.path, storage)?;
    let path = spec.path.as_str();
    let format = resolved_format(name, spec, storage).await;
    if format == TableFormat::Delta {
        return register_delta(ctx, name, spec, storage).await.map(Some);
    }
    if spec.version.is_some() {
        return Err(config_error(format!(
            "source.tables.{name}.version is a Delta table's version, but {path} holds no _delta_log: remove version, or point path at the Delta table's folder"
        )));
    }
    match listing_table(ctx, name, path, format).await {
        Ok(table) => {
            ctx.register_table(name, Arc::new(table))?;
            Ok(None)
        }
        Err(e) if storage::is_remote(path) => {
            let problem = storage::errors::classify_with_probe(&e, store.as_deref()).await;
            Err(anyhow!(
                "table `{name}`: {}",
                storage::errors::describe(path, problem, &e)
            ))
        }
        Err(e) => Err(anyhow!(
            "table `{name}` ({path}): cannot read as {format:?}: {}",
            root_cause(&e)
        )),
    }
}

/// A listing table over `path` with its schema (and Hive partitions) inferred.
async fn listing_table(
    ctx: &SessionContext,
    name: &str,
    path: &str,
    format: TableFormat,
) -> datafusion::error::Result<ListingTable> {
    // A single named local file is read whatever its extension; folders and globs filter by it.
    let single_file = std::path::Path::new(path).is_file();
    let config = ctx.copied_config();
    let table_options = ctx.copied_table_options();
    let mut options = match format {
        TableFormat::Parquet => {
            ParquetReadOptions::default().to_listing_options(&config, table_options)
        }
        TableFormat::Csv => CsvReadOptions::new().to_listing_options(&config, table_options),
        TableFormat::Json => JsonReadOptions::default().to_listing_options(&config, table_options),
        TableFormat::Delta => {
            return Err(datafusion::error::DataFusionError::Internal(
                "a Delta table is not a listing table".into(),
            ));
        }
    };
    if single_file {
        options.file_extension = String::new();
    }
    let state = ctx.state();
    let url = listing_url(path)?;
    // Hive-style folders under a directory or prefix become text columns.
    if !single_file && !storage::is_glob(path) {
        let partitions = options.infer_partitions(&state, &url).await?;
        if !partitions.is_empty() {
            tracing::debug!("table {name}: partition columns {partitions:?}");
            options = options.with_table_partition_cols(
                partitions
                    .into_iter()
                    .map(|p| (p, DataType::Utf8))
                    .collect(),
            );
        }
    }
    let schema = options.infer_schema(&state, &url).await?;
    let table_config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    ListingTable::try_new(table_config)
}

/// Registers every table; returns the Delta tables read and their versions.
pub async fn register_tables(
    ctx: &SessionContext,
    source: &SourceSpec,
    storage: &StorageSpec,
) -> Result<Vec<DeltaRead>> {
    let mut delta = Vec::new();
    for (name, spec) in &source.tables {
        delta.extend(register_table(ctx, name, spec, storage).await?);
    }
    Ok(delta)
}

/// The source rows: the pipeline's SQL, or its single table.
pub async fn source_frame(ctx: &SessionContext, source: &SourceSpec) -> Result<DataFrame> {
    match &source.sql {
        Some(sql) => super::read_only_sql(ctx, sql)
            .await
            .map_err(|e| e.context("source.sql")),
        None => {
            let name = source
                .tables
                .keys()
                .next()
                .ok_or_else(|| config_error("source.tables is empty"))?;
            Ok(ctx.table(name.as_str()).await?)
        }
    }
}

/// Source row count from Parquet footers, when the pipeline reads one table without SQL.
pub async fn known_source_rows(ctx: &SessionContext, source: &SourceSpec) -> Option<u64> {
    if source.sql.is_some() {
        return None;
    }
    let (name, spec) = source.tables.iter().next()?;
    if table_format(spec) != TableFormat::Parquet {
        return None;
    }
    let df = ctx
        .sql(&format!(
            "SELECT COUNT(*) FROM \"{}\"",
            name.replace('"', "\"\"")
        ))
        .await
        .ok()?;
    let batches = df.collect().await.ok()?;
    let col = batches.first()?.column(0).clone();
    let counts = col
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int64Array>()?;
    Some(counts.value(0) as u64)
}
