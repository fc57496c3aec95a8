//! The DataFusion side: a session with the pipeline's tables ([`source`]) and functions, the
//! DataFrame that produces `id`, `vector` and metadata columns, and the checks made on the source
//! before anything is embedded ([`checks`]).

pub mod change_feed;
pub mod checks;
pub mod estimate;
pub mod fingerprint;
pub mod memory;
pub mod shard;
pub mod source;

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::DFSchema;
use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::{SQLOptions, SessionConfig};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, ident, lit};

use crate::embed::Embedder;
use crate::embed::bm25::udf::{Bm25Udf, SPARSE_COLUMN};
use crate::embed::spec::EmbedSpec;
use crate::embed::udf::EmbedUdf;
use crate::error::{config_error, one_line};
use crate::similarity::CosineSimilarity;
use crate::storage::StorageSpec;
use source::SourceSpec;

/// A hidden column an incremental run adds to its source ([`crate::incremental::classify`]):
/// the source row's id as text. When present, chunked frames also count each row's chunks.
pub const SOURCE_ID_COLUMN: &str = "__ef_id";
/// The hidden column that holds a source row's chunk count (incremental runs).
pub const CHUNK_COUNT_COLUMN: &str = "__ef_chunks";

/// Rows per record batch inside the plan: small enough for smooth progress and bounded memory,
/// large enough for length-sorted micro-batches inside `embed()`.
pub const PLAN_BATCH_ROWS: usize = 1024;

/// A DataFusion session with embedflow's functions registered; `embed()` embeds a table's rows
/// (with the model's document prompt).
pub fn session_context(embedder: Option<Arc<Embedder>>) -> SessionContext {
    let ctx = bare_context();
    if let Some(e) = embedder {
        ctx.register_udf(EmbedUdf::udf(e));
    }
    ctx
}

/// A session for searching: `embed()` embeds queries (with the model's query prompt).
pub fn query_context(embedder: Arc<Embedder>) -> SessionContext {
    let ctx = bare_context();
    ctx.register_udf(EmbedUdf::for_queries(embedder));
    ctx
}

fn bare_context() -> SessionContext {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let config = SessionConfig::new()
        .with_batch_size(PLAN_BATCH_ROWS)
        .with_target_partitions(cores)
        .with_information_schema(true);
    let config = memory::fit_session(config, memory::limit());
    let ctx = SessionContext::new_with_config_rt(config, memory::runtime());
    ctx.register_udf(CosineSimilarity::udf());
    ctx.register_udf(fingerprint::FingerprintUdf::udf());
    ctx.register_udf(crate::embed::bm25::udf::SparseDot::udf());
    ctx
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

/// The id of each source row: the `embed.id` column, or the MD5 of the key columns (default:
/// the text).
pub(crate) fn id_expr(schema: &DFSchema, embed: &EmbedSpec) -> Result<Expr> {
    Ok(match &embed.id {
        Some(id) => {
            field_type(schema, id, "embed.id")?;
            ident(id.as_str())
        }
        None => {
            let key: Vec<String> = if embed.key.is_empty() {
                vec![embed.text.clone()]
            } else {
                embed.key.clone()
            };
            for k in &key {
                field_type(schema, k, "embed.key")?;
            }
            key_hash(&key)
        }
    })
}

/// The source's other columns, which ride along as metadata; a name the output uses itself is
/// an error that says how to rename it.
fn metadata_columns(schema: &DFSchema, embed: &EmbedSpec, taken: &[&str]) -> Result<Vec<Expr>> {
    let mut exprs = Vec::new();
    for f in schema.fields() {
        let name = f.name();
        if Some(name) == embed.id.as_ref()
            || Some(name) == embed.vector.as_ref()
            || (embed.chunking.is_some() && *name == embed.text)
        {
            continue;
        }
        if taken.contains(&name.as_str()) {
            bail!(
                "source column `{name}` clashes with the output's `{name}` column; rename it in source.sql (e.g. SELECT {name} AS source_{name}, ...)"
            );
        }
        exprs.push(ident(name.as_str()));
    }
    Ok(exprs)
}

/// The pipeline's DataFrame: `id`, `vector` (from `embed(text)`) and the other source columns;
/// with `embed.chunking`, one row per chunk: `id` is `<source id>#<n>`, with `chunk`, the
/// chunk's `text` and `source_id`.
pub fn output_frame(
    source: DataFrame,
    spec: &EmbedSpec,
    ctx: &SessionContext,
) -> Result<DataFrame> {
    let schema = source.schema().clone();
    let text = &spec.text;
    let text_type = field_type(&schema, text, "embed.text")?;
    if !is_text(text_type) {
        bail!(
            "embed.text: column `{text}` is {text_type}, not text; convert it in source.sql, e.g. CAST({text} AS VARCHAR) AS {text}"
        );
    }
    let embed = ctx
        .udf("embed")
        .context("embed() is not registered: no model loaded")?;
    let id = id_expr(&schema, spec)?;
    // embed.sparse: the text's sparse vector beside its dense one.
    let bm25 = ctx.udf("bm25").ok();
    let sparse = |text: Expr| {
        bm25.as_ref()
            .map(|f| f.call(vec![text]).alias(SPARSE_COLUMN))
    };
    if spec.chunking.is_none() {
        let mut exprs = vec![
            id.alias("id"),
            embed.call(vec![ident(text.as_str())]).alias("vector"),
        ];
        exprs.extend(sparse(ident(text.as_str())));
        exprs.extend(metadata_columns(
            &schema,
            spec,
            &["id", "vector", SPARSE_COLUMN],
        )?);
        return Ok(source.select(exprs)?);
    }
    use datafusion::common::UnnestOptions;
    use datafusion::functions::core::expr_fn::get_field;
    use datafusion::functions::string::expr_fn::concat;
    let chunks = ctx
        .udf("chunks")
        .context("chunks() is not registered: embed.chunking without a chunker")?;
    let metadata = metadata_columns(
        &schema,
        spec,
        &[
            "id",
            "vector",
            SPARSE_COLUMN,
            "chunk",
            "text",
            "source_id",
            CHUNKS,
        ],
    )?;
    let mut exprs = vec![
        id.alias("source_id"),
        chunks.call(vec![ident(text.as_str())]).alias(CHUNKS),
    ];
    exprs.extend(metadata.iter().cloned());
    let selected = source.select(exprs)?;
    // An incremental run (its hidden columns ride along as metadata) also needs to know how many
    // chunks each source row has, to tell when all of them are written.
    let counted = schema.has_column_with_unqualified_name(SOURCE_ID_COLUMN);
    let selected = if counted {
        use datafusion::functions_nested::expr_fn::cardinality;
        selected.with_column(
            CHUNK_COUNT_COLUMN,
            cast(cardinality(ident(CHUNKS)), DataType::Int32),
        )?
    } else {
        selected
    };
    let unnested = selected
        .unnest_columns_with_options(&[CHUNKS], UnnestOptions::new().with_preserve_nulls(true))?;
    let number = get_field(ident(CHUNKS), "chunk");
    let chunk_text = get_field(ident(CHUNKS), "text");
    let mut exprs = vec![
        concat(vec![
            ident("source_id"),
            lit("#"),
            cast(number.clone(), DataType::Utf8),
        ])
        .alias("id"),
        embed.call(vec![chunk_text.clone()]).alias("vector"),
    ];
    exprs.extend(sparse(chunk_text.clone()));
    exprs.extend([
        number.alias("chunk"),
        chunk_text.alias("text"),
        ident("source_id"),
    ]);
    exprs.extend(metadata);
    if counted {
        exprs.push(ident(CHUNK_COUNT_COLUMN));
    }
    Ok(unnested.select(exprs)?)
}

/// The texts `embed()` embeds, one per output row (each chunk, with `embed.chunking`), as one
/// column `text`: what BM25 is fitted on.
pub fn texts_frame(source: DataFrame, spec: &EmbedSpec, ctx: &SessionContext) -> Result<DataFrame> {
    let text = ident(spec.text.as_str());
    if spec.chunking.is_none() {
        return Ok(source.select(vec![text.alias("text")])?);
    }
    use datafusion::functions::core::expr_fn::get_field;
    let chunks = ctx
        .udf("chunks")
        .context("chunks() is not registered: embed.chunking without a chunker")?;
    Ok(source
        .select(vec![chunks.call(vec![text]).alias(CHUNKS)])?
        .unnest_columns(&[CHUNKS])?
        .select(vec![get_field(ident(CHUNKS), "text").alias("text")])?)
}

/// The unnested chunks column, never in the output.
const CHUNKS: &str = "__embedflow_chunks";

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

/// What the plan stage reads of a pipeline: its source (tables, SQL), how rows become texts, ids
/// and metadata (`embed`), and where its files live (`storage`).
#[derive(Clone, Copy)]
pub struct PlanSpec<'a> {
    pub source: &'a SourceSpec,
    pub embed: &'a EmbedSpec,
    pub storage: &'a StorageSpec,
}

/// Everything `run`, `validate` and `explain` need.
pub struct PipelinePlan {
    pub ctx: SessionContext,
    /// The source rows, before ids and embedding.
    pub source: DataFrame,
    pub frame: DataFrame,
    /// One `id` per source row (before chunking), for the checks made before embedding.
    pub ids: DataFrame,
    /// The Delta tables read, at which versions.
    pub delta: Vec<source::DeltaRead>,
    /// Set when an incremental run narrowed `source`, `frame` and `ids` to the rows a Delta
    /// table's change data feed names ([`change_feed`]).
    pub change_feed: Option<change_feed::ChangeFeed>,
    /// `embed.vector` is a list column (a Delta table's `array<float>`): the length its vectors
    /// are cast to.
    pub vector_length: Option<i32>,
}

pub async fn build(spec: PlanSpec<'_>, embedder: Arc<Embedder>) -> Result<PipelinePlan> {
    build_sharded(spec, embedder, None).await
}

/// [`build`] over the rows of one shard only (`run --shard I/N`).
pub async fn build_sharded(
    spec: PlanSpec<'_>,
    embedder: Arc<Embedder>,
    shard: Option<crate::shard::Shard>,
) -> Result<PipelinePlan> {
    let ctx = session_context(Some(Arc::clone(&embedder)));
    let delta = source::register_tables(&ctx, spec.source, spec.storage).await?;
    if let Some(spec) = &spec.embed.chunking {
        ctx.register_udf(crate::embed::chunk::ChunksUdf::udf(spec, &embedder)?);
    }
    let source = source::source_frame(&ctx, spec.source).await?;
    if let Some(sparse) = &spec.embed.sparse {
        // Fitted on every row of the source, whatever the shard: all shards share it.
        let texts = texts_frame(source.clone(), spec.embed, &ctx)?;
        let bm25 = crate::embed::bm25::fit_or_load(sparse, texts, spec.storage).await?;
        ctx.register_udf(Bm25Udf::documents(bm25));
    }
    let source = shard_rows(source, spec.embed, shard)?;
    let ids = source
        .clone()
        .select(vec![id_expr(source.schema(), spec.embed)?.alias("id")])?;
    let frame = output_frame(source.clone(), spec.embed, &ctx)?;
    Ok(PipelinePlan {
        ctx,
        source,
        frame,
        ids,
        delta,
        change_feed: None,
        vector_length: None,
    })
}

/// The plan of a pipeline that reads vectors (`embed.vector`): `id`, the column's vectors as
/// `vector` (`FixedSizeList<Float32, n>`), and the other columns; no model, no embedding.
pub async fn build_vectors(
    spec: PlanSpec<'_>,
    shard: Option<crate::shard::Shard>,
) -> Result<PipelinePlan> {
    let ctx = session_context(None);
    let delta = source::register_tables(&ctx, spec.source, spec.storage).await?;
    let source = source::source_frame(&ctx, spec.source).await?;
    let vector_length = list_vector_length(&source, spec.embed).await?;
    let source = fixed_vectors(source, spec.embed, vector_length)?;
    let source = shard_rows(source, spec.embed, shard)?;
    let ids = source
        .clone()
        .select(vec![id_expr(source.schema(), spec.embed)?.alias("id")])?;
    let frame = vector_frame(source.clone(), spec.embed)?;
    Ok(PipelinePlan {
        ctx,
        source,
        frame,
        ids,
        delta,
        change_feed: None,
        vector_length,
    })
}

/// When `embed.vector` is a list column of floats (a Delta table's `array<float>`: Delta has no
/// fixed-size lists), the length of its first vector, which every row must share.
async fn list_vector_length(source: &DataFrame, embed: &EmbedSpec) -> Result<Option<i32>> {
    use datafusion::arrow::array::{Array, AsArray};
    let Some(column) = embed.vector.as_deref() else {
        return Ok(None);
    };
    let is_list = matches!(
        field_type(source.schema(), column, "embed.vector")?,
        DataType::List(_) | DataType::LargeList(_) | DataType::ListView(_)
    );
    if !is_list {
        return Ok(None);
    }
    let first = source
        .clone()
        .select(vec![
            cast(
                ident(column),
                DataType::List(Arc::new(
                    datafusion::arrow::datatypes::Field::new_list_field(DataType::Float32, true),
                )),
            )
            .alias("v"),
        ])?
        .filter(ident("v").is_not_null())?
        .limit(0, Some(1))?
        .collect()
        .await?;
    let Some(b) = first.iter().find(|b| b.num_rows() > 0) else {
        bail!(
            "embed.vector: column `{column}` holds lists, and the source has no row to tell their length"
        );
    };
    let list = b.column(0).as_list::<i32>();
    let n = list.value(0).len();
    if list.is_null(0) || n == 0 {
        bail!("embed.vector: column `{column}` holds an empty list");
    }
    Ok(Some(n as i32))
}

/// The source with its `embed.vector` list column cast to fixed-size vectors of `length`.
fn fixed_vectors(source: DataFrame, embed: &EmbedSpec, length: Option<i32>) -> Result<DataFrame> {
    let (Some(column), Some(n)) = (embed.vector.as_deref(), length) else {
        return Ok(source);
    };
    let item = Arc::new(datafusion::arrow::datatypes::Field::new_list_field(
        DataType::Float32,
        true,
    ));
    Ok(source.with_column(
        column,
        cast(ident(column), DataType::FixedSizeList(item, n)),
    )?)
}

/// The rows of one shard (`run --shard I/N`), or all of them.
fn shard_rows(
    source: DataFrame,
    embed: &EmbedSpec,
    shard: Option<crate::shard::Shard>,
) -> Result<DataFrame> {
    Ok(match shard {
        Some(shard) => {
            let id = cast(id_expr(source.schema(), embed)?, DataType::Utf8);
            source.filter(shard.filter(id))?
        }
        None => source,
    })
}

impl PipelinePlan {
    /// Replaces the source rows by `source` (the same columns): the ids and the output frame
    /// follow. For an incremental run that reads only what a change feed names.
    pub fn narrow(
        &mut self,
        source: DataFrame,
        embed: &EmbedSpec,
        shard: Option<crate::shard::Shard>,
    ) -> Result<()> {
        let source = fixed_vectors(source, embed, self.vector_length)?;
        let source = shard_rows(source, embed, shard)?;
        self.ids = source
            .clone()
            .select(vec![id_expr(source.schema(), embed)?.alias("id")])?;
        self.frame = match embed.vector {
            Some(_) => vector_frame(source.clone(), embed)?,
            None => output_frame(source.clone(), embed, &self.ctx)?,
        };
        self.source = source;
        Ok(())
    }
}

/// The output of a pipeline that reads vectors (`embed.vector`): `id`, the column's vectors as
/// `vector` (`FixedSizeList<Float32, n>`) and the other source columns.
pub fn vector_frame(source: DataFrame, embed: &EmbedSpec) -> Result<DataFrame> {
    let column = embed.vector.as_deref().context("embed.vector is not set")?;
    let schema = source.schema().clone();
    let id = id_expr(&schema, embed)?;
    let vector = match field_type(&schema, column, "embed.vector")? {
        DataType::FixedSizeList(item, n)
            if matches!(
                item.data_type(),
                DataType::Float16 | DataType::Float32 | DataType::Float64
            ) =>
        {
            cast(ident(column), crate::embed::udf::vector_type(*n as usize))
        }
        other => bail!(
            "embed.vector: column `{column}` is {other}, not fixed-size vectors of floats; convert it in source.sql, e.g. arrow_cast({column}, 'FixedSizeList(384, Float32)') AS {column}"
        ),
    };
    let mut exprs = vec![id.alias("id"), vector.alias("vector")];
    exprs.extend(metadata_columns(&schema, embed, &["id", "vector"])?);
    Ok(source.select(exprs)?)
}

/// Plans `sql` as a query that only reads: DDL, DML, COPY and other statements are refused
/// (a configuration error) before anything runs, using DataFusion's own SQL options.
/// (`INSERT INTO sink` too: it writes, and needs `embedflow sql --allow-writes`).
pub async fn read_only_sql(ctx: &SessionContext, sql: &str) -> Result<DataFrame> {
    let plan = ctx
        .state()
        .create_logical_plan(sql)
        .await
        .map_err(|e| anyhow!("{}", one_line(&e.to_string())))?;
    let read_only = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    if read_only.verify_plan(&plan).is_err() {
        let what = match &plan {
            LogicalPlan::Ddl(ddl) => ddl.name().to_string(),
            LogicalPlan::Dml(dml) => format!("{} {}", dml.op, dml.table_name),
            LogicalPlan::Copy(copy) => format!("COPY TO {}", copy.output_url),
            LogicalPlan::Statement(s) => s.name().to_string(),
            _ => "the statement".to_string(),
        };
        return Err(config_error(format!(
            "{what} writes or creates files or tables, and a query here may only read (COPY, CREATE, INSERT, DROP and SET are refused; `embedflow sql --allow-writes` allows them)"
        )));
    }
    Ok(ctx.execute_logical_plan(plan).await?)
}
