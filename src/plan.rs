//! The DataFusion side: a session with the pipeline's tables and functions, and the DataFrame
//! that produces `id`, `vector` and metadata columns.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionConfig;
use datafusion::prelude::{
    CsvReadOptions, DataFrame, Expr, JsonReadOptions, ParquetReadOptions, SessionContext, cast,
    ident, lit,
};

use crate::config::{Pipeline, SourceSpec, StorageSpec, TableFormat, TableSpec};
use crate::embed::Embedder;
use crate::embed::udf::EmbedUdf;
use crate::error::config_error;
use crate::similarity::CosineSimilarity;
use crate::storage;

/// Rows per record batch inside the plan: small enough for smooth progress and bounded memory,
/// large enough for length-sorted micro-batches inside `embed()`.
pub const PLAN_BATCH_ROWS: usize = 1024;

/// A DataFusion session with embedflow's functions registered.
pub fn session_context(embedder: Option<Arc<Embedder>>) -> SessionContext {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let config = SessionConfig::new()
        .with_batch_size(PLAN_BATCH_ROWS)
        .with_target_partitions(cores)
        .with_information_schema(true);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(CosineSimilarity::udf());
    if let Some(e) = embedder {
        ctx.register_udf(EmbedUdf::udf(e));
    }
    ctx
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

/// Registers one table, naming the table and path in any error.
///
/// Local paths and `s3://` URLs alike: a file, a folder (prefix) or a glob. Hive-style
/// `key=value/` folders become partition columns (text).
pub async fn register_table(
    ctx: &SessionContext,
    name: &str,
    spec: &TableSpec,
    storage: &StorageSpec,
) -> Result<()> {
    storage::check_local_source(name, &spec.path)?;
    storage::register_store(ctx, &format!("table `{name}`"), &spec.path, storage)?;
    let path = spec.path.as_str();
    let format = table_format(spec);
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
    };
    if single_file {
        options.file_extension = String::new();
    }
    let describe = |e: datafusion::error::DataFusionError| {
        let detail = e.to_string();
        if storage::is_remote(path) {
            anyhow!(
                "table `{name}`: {}",
                storage::describe_store_error(path, &detail)
            )
        } else {
            anyhow!(
                "table `{name}` ({path}): cannot read as {format:?}: {}",
                one_line(&detail)
            )
        }
    };
    let state = ctx.state();
    let url = listing_url(path).map_err(describe)?;
    // Hive-style folders under a directory or prefix become text columns.
    if !single_file && !storage::is_glob(path) {
        let partitions = options
            .infer_partitions(&state, &url)
            .await
            .map_err(describe)?;
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
    let schema = options.infer_schema(&state, &url).await.map_err(describe)?;
    let table_config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(table_config).map_err(describe)?;
    ctx.register_table(name, Arc::new(table))
        .map_err(describe)?;
    Ok(())
}

pub async fn register_tables(
    ctx: &SessionContext,
    source: &SourceSpec,
    storage: &StorageSpec,
) -> Result<()> {
    for (name, spec) in &source.tables {
        register_table(ctx, name, spec, storage).await?;
    }
    Ok(())
}

/// The source rows: the pipeline's SQL, or its single table.
pub async fn source_frame(ctx: &SessionContext, source: &SourceSpec) -> Result<DataFrame> {
    match &source.sql {
        Some(sql) => ctx
            .sql(sql)
            .await
            .map_err(|e| anyhow!("source.sql: {}", one_line(&e.to_string()))),
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

fn available(schema: &DFSchema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{} ({})", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn field_type<'a>(schema: &'a DFSchema, name: &str, key: &str) -> Result<&'a DataType> {
    schema
        .fields()
        .iter()
        .find(|f| f.name() == name)
        .map(|f| f.data_type())
        .ok_or_else(|| {
            anyhow!(
                "{key}: column `{name}` not found; available columns: {}",
                available(schema)
            )
        })
}

fn is_text(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_text(v),
        _ => false,
    }
}

/// The pipeline's DataFrame: `id`, `vector` (from `embed(text)`) and the other source columns.
pub fn output_frame(
    source: DataFrame,
    pipeline: &Pipeline,
    ctx: &SessionContext,
) -> Result<DataFrame> {
    let schema = source.schema().clone();
    let text = &pipeline.embed.text;
    let text_type = field_type(&schema, text, "embed.text")?;
    if !is_text(text_type) {
        bail!(
            "embed.text: column `{text}` is {text_type}, not text; convert it in source.sql, e.g. CAST({text} AS VARCHAR) AS {text}"
        );
    }
    let embed = ctx
        .udf("embed")
        .context("embed() is not registered: no model loaded")?;
    let id_expr: Expr = match &pipeline.embed.id {
        Some(id) => {
            field_type(&schema, id, "embed.id")?;
            ident(id.as_str())
        }
        None => {
            let key: Vec<String> = if pipeline.embed.key.is_empty() {
                vec![text.clone()]
            } else {
                pipeline.embed.key.clone()
            };
            for k in &key {
                field_type(&schema, k, "embed.key")?;
            }
            key_hash(&key)
        }
    };
    let mut exprs = vec![
        id_expr.alias("id"),
        embed.call(vec![ident(text.as_str())]).alias("vector"),
    ];
    for f in schema.fields() {
        let name = f.name();
        if Some(name) == pipeline.embed.id.as_ref() {
            continue;
        }
        if name == "id" || name == "vector" {
            bail!(
                "source column `{name}` clashes with the output's `{name}` column; rename it in source.sql (e.g. SELECT {name} AS source_{name}, ...)"
            );
        }
        exprs.push(ident(name.as_str()));
    }
    Ok(source.select(exprs)?)
}

/// A stable id from key columns: the MD5 (hex) of their values as text, joined by U+001F, with
/// U+0000 standing for null. One text column hashes to the MD5 of the text itself.
fn key_hash(key: &[String]) -> Expr {
    use datafusion::functions::expr_fn::{coalesce, concat_ws, md5};
    if let [only] = key {
        return md5(cast(ident(only.as_str()), DataType::Utf8));
    }
    let parts = key
        .iter()
        .map(|k| coalesce(vec![cast(ident(k.as_str()), DataType::Utf8), lit("\u{0}")]))
        .collect();
    md5(concat_ws(lit("\u{1f}"), parts))
}

/// Everything `run`, `validate` and `explain` need.
pub struct PipelinePlan {
    pub ctx: SessionContext,
    pub frame: DataFrame,
}

pub async fn build(pipeline: &Pipeline, embedder: Arc<Embedder>) -> Result<PipelinePlan> {
    let ctx = session_context(Some(embedder));
    register_tables(&ctx, &pipeline.source, &pipeline.storage).await?;
    let source = source_frame(&ctx, &pipeline.source).await?;
    let frame = output_frame(source, pipeline, &ctx)?;
    Ok(PipelinePlan { ctx, frame })
}

/// Source row count from Parquet footers, when the pipeline reads one table without SQL.
pub async fn known_source_rows(plan: &PipelinePlan, pipeline: &Pipeline) -> Option<u64> {
    if pipeline.source.sql.is_some() {
        return None;
    }
    let (name, spec) = pipeline.source.tables.iter().next()?;
    if table_format(spec) != TableFormat::Parquet {
        return None;
    }
    let df = plan
        .ctx
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

/// DataFusion errors can span lines; messages here stay on one.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
