//! `query`: exact cosine top-k over a pipeline's Parquet output, through DataFusion.
//!
//! It is plain SQL underneath: `cosine_similarity(vector, embed('text'))` ordered descending with
//! a limit, which DataFusion runs as a streaming top-k (memory bounded by k).

use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::FunctionRegistry;
use datafusion::prelude::{ParquetReadOptions, SessionContext, ident, lit};

use crate::config::Pipeline;
use crate::embed::Embedder;
use crate::embed::bm25::Bm25;
use crate::embed::bm25::udf::{Bm25Udf, SPARSE_COLUMN};
use crate::error::config_error;
use crate::error::one_line;
use crate::plan::query_context;
use crate::sink::pinecone::config::PineconeSinkSpec;
use crate::sink::pinecone::records::SparseWire;
use crate::storage::OutputLocation;
use datafusion::logical_expr::cast;
use object_store::ObjectStoreExt;

/// How `query` shows results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned table; long text cut to `--width` characters.
    Table,
    /// One JSON object per line, nothing cut.
    Json,
}

/// Hybrid search (`query --alpha`): dense and BM25 sparse scores in a convex combination,
/// `alpha x dense + (1 - alpha) x sparse`, as pinecone-text's `hybrid_convex_scale` weighs a
/// query for Pinecone (1: dense only, 0: sparse only).
#[derive(Debug, Clone)]
pub struct Hybrid {
    pub alpha: f32,
    pub bm25: Arc<Bm25>,
}

impl Hybrid {
    /// The hybrid search `alpha` asks for: the pipeline's BM25 parameters (`embed.sparse`),
    /// read from the file its run wrote.
    pub async fn of(pipeline: &Pipeline, alpha: Option<f32>) -> Result<Option<Hybrid>> {
        let Some(alpha) = alpha else {
            return Ok(None);
        };
        if !(0.0..=1.0).contains(&alpha) {
            return Err(config_error(format!(
                "--alpha {alpha}: give a weight from 0 (sparse only) to 1 (dense only)"
            )));
        }
        let Some(path) = pipeline
            .embed
            .sparse
            .as_ref()
            .and_then(|s| s.params.as_deref())
        else {
            return Err(config_error(
                "--alpha weighs dense against sparse scores: the pipeline has no embed.sparse, so its output has no sparse vectors",
            ));
        };
        let params = crate::embed::bm25::load_params(path, &pipeline.storage)
            .await?
            .ok_or_else(|| {
                config_error(format!(
                    "no BM25 parameters at {path}: run `embedflow run` on this pipeline first"
                ))
            })?;
        Ok(Some(Hybrid {
            alpha,
            bm25: Arc::new(Bm25::new(params)),
        }))
    }
}

/// Runs a top-k search; returns batches of `id`, `score` and metadata, best first.
pub async fn search(
    pipeline: &Pipeline,
    embedder: Arc<Embedder>,
    text: &str,
    k: usize,
    width: Option<usize>,
    hybrid: Option<&Hybrid>,
) -> Result<Vec<RecordBatch>> {
    let ctx = query_context(embedder);
    // A folder output is every part in it: one per shard of a sharded run.
    register_output(&ctx, pipeline, "vectors").await?;
    let embed = ctx
        .udf("embed")
        .map_err(|_| anyhow!("embed() is not registered"))?;
    let dense = embed.call(vec![lit(text)]);
    let hybrid = match hybrid {
        Some(h) => {
            let udf = Bm25Udf::queries(Arc::clone(&h.bm25));
            Some((h.alpha, udf.call(vec![lit(text)])))
        }
        None => None,
    };
    top_k(&ctx, "vectors", dense, k, width, None, hybrid).await
}

/// Registers a pipeline's Parquet output (every part of a folder output: one per shard of a
/// sharded run) as `table` in `ctx`.
pub async fn register_output(ctx: &SessionContext, pipeline: &Pipeline, table: &str) -> Result<()> {
    let spec = pipeline.sink.parquet()?;
    if spec.is_delta() {
        let delta =
            crate::storage::delta::for_write("sink.parquet.path", &spec.path, &pipeline.storage)
                .await?;
        if delta.version().is_none() {
            bail!(
                "no output at {}: run `embedflow run` on this pipeline first",
                spec.path
            );
        }
        let provider =
            crate::storage::delta::provider("sink.parquet.path", &spec.path, &delta, ctx).await?;
        ctx.register_table(table, provider)?;
        return Ok(());
    }
    let location = OutputLocation::for_parquet_sink(&spec.path, &pipeline.storage)?;
    let file = location.display.clone();
    if location.is_remote() {
        crate::storage::register_store(ctx, "sink.parquet.path", &file, &pipeline.storage)?;
        if location.store.head(&location.path).await.is_err() {
            bail!("no output at {file}: run `embedflow run` on this pipeline first");
        }
    } else if !std::path::Path::new(&file).is_file() {
        bail!("no output at {file}: run `embedflow run` on this pipeline first");
    }
    let (path, extension) = if crate::storage::names_parquet_file(&spec.path) {
        (file.clone(), "")
    } else {
        let folder = file
            .strip_suffix(location.file_name())
            .unwrap_or(&file)
            .to_string();
        (folder, ".parquet")
    };
    ctx.register_parquet(
        table,
        &path,
        ParquetReadOptions {
            file_extension: extension,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow!("{file}: {}", one_line(&e.to_string())))?;
    Ok(())
}

/// A top-k request to a Pinecone index.
#[derive(Debug, Clone)]
pub struct PineconeQuery {
    pub k: usize,
    pub filter: Option<serde_json::Value>,
    pub namespace: Option<String>,
    /// Cut metadata text to this many characters.
    pub width: Option<usize>,
    /// The index holds chunks (`embed.chunking`): show each source row's best chunk once.
    pub chunked: bool,
}

/// Embeds `text` and asks the pipeline's Pinecone index for its nearest vectors; returns one
/// batch of `id`, `score` and `metadata` (JSON text), best first. A hybrid search sends the
/// dense vector times `alpha` and the BM25 query vector times `1 - alpha`, which the index
/// scores by dot product.
pub async fn search_pinecone(
    spec: &PineconeSinkSpec,
    embedder: &Arc<Embedder>,
    text: &str,
    q: &PineconeQuery,
    hybrid: Option<&Hybrid>,
) -> Result<Vec<RecordBatch>> {
    let e = Arc::clone(embedder);
    let owned = text.to_string();
    let mut vector = tokio::task::spawn_blocking(move || e.embed_queries(&[Some(owned.as_str())]))
        .await
        .map_err(|e| anyhow!("embedding panicked: {e}"))??;
    let sparse = hybrid.map(|h| {
        vector.iter_mut().for_each(|v| *v *= h.alpha);
        let s = h.bm25.encode_query(text);
        SparseWire {
            indices: s.indices,
            values: s.values.iter().map(|v| v * (1.0 - h.alpha)).collect(),
        }
    });
    search_pinecone_vector(spec, &vector, sparse.as_ref(), q).await
}

/// Asks the pipeline's Pinecone index for the nearest vectors to `vector`; one batch of `id`,
/// `score` and `metadata` (JSON text), best first.
pub async fn search_pinecone_vector(
    spec: &PineconeSinkSpec,
    vector: &[f32],
    sparse: Option<&SparseWire>,
    q: &PineconeQuery,
) -> Result<Vec<RecordBatch>> {
    if q.k > 10_000 {
        bail!("k is at most 10000 for Pinecone");
    }
    let conn = crate::sink::pinecone::connect(spec, Some(vector.len())).await?;
    // Chunks of one source row can fill the top k: ask for more, keep each source's best, and
    // ask again without the sources already found until k sources are found or the index has
    // no more. Pinecone answers at most 1,000 matches with metadata.
    let top_k = if q.chunked {
        (q.k * 10).clamp(q.k, 1000.max(q.k))
    } else {
        q.k
    };
    let mut matches: Vec<crate::sink::pinecone::client::QueryMatch> = Vec::new();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    loop {
        let mut body = serde_json::json!({
            "topK": top_k,
            "vector": vector,
            "includeMetadata": true,
            "includeValues": false,
        });
        if let Some(sparse) = sparse.filter(|s| !s.indices.is_empty()) {
            body["sparseVector"] = serde_json::to_value(sparse)?;
        }
        if let Some(ns) = q.namespace.as_deref().filter(|n| !n.is_empty()) {
            body["namespace"] = ns.into();
        }
        let unseen = (!seen.is_empty())
            .then(|| serde_json::json!({ "source_id": { "$nin": seen.clone() } }));
        body["filter"] = match (&q.filter, unseen) {
            (Some(f), Some(u)) => serde_json::json!({ "$and": [f, u] }),
            (Some(f), None) => f.clone(),
            (None, Some(u)) => u,
            (None, None) => serde_json::Value::Null,
        };
        if body["filter"].is_null() {
            body.as_object_mut().map(|o| o.remove("filter"));
        }
        let answer: crate::sink::pinecone::client::QueryResponse = conn
            .client
            .post_retrying("/query", serde_json::to_vec(&body)?.into())
            .await
            .map_err(|e| anyhow!("query to {} failed: {e}", conn.display))?;
        let full = answer.matches.len() >= top_k;
        if !q.chunked {
            matches = answer.matches;
            break;
        }
        for m in answer.matches {
            let source = m
                .metadata
                .as_ref()
                .and_then(|md| md.get("source_id"))
                .cloned()
                .unwrap_or_else(|| m.id.clone().into());
            if !seen.contains(&source) {
                seen.push(source);
                matches.push(m);
            }
        }
        if matches.len() >= q.k || !full {
            matches.truncate(q.k);
            break;
        }
    }
    let mut ids = Vec::with_capacity(matches.len());
    let mut scores = Vec::with_capacity(matches.len());
    let mut metadata = Vec::with_capacity(matches.len());
    for m in matches {
        ids.push(m.id);
        scores.push(m.score.unwrap_or(f64::NAN) as f32);
        let md = m.metadata.map(|v| {
            let s = serde_json::Value::Object(v).to_string();
            match q.width {
                Some(w) if s.chars().count() > w => s.chars().take(w).collect::<String>() + "...",
                _ => s,
            }
        });
        metadata.push(md);
    }
    use datafusion::arrow::array::{Float32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("metadata", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(Float32Array::from(scores)),
            Arc::new(StringArray::from(metadata)),
        ],
    )?;
    Ok(vec![batch])
}

/// Top-k rows of `table` by cosine similarity to `query` (a vector expression: `embed('...')`
/// or a literal), among the rows `filter` (SQL) keeps. `hybrid` (`alpha`, a sparse query
/// vector) scores `alpha x cosine + (1 - alpha) x sparse_dot(sparse_values, query)`.
pub async fn top_k(
    ctx: &SessionContext,
    table: &str,
    query: datafusion::prelude::Expr,
    k: usize,
    width: Option<usize>,
    filter: Option<&str>,
    hybrid: Option<(f32, datafusion::prelude::Expr)>,
) -> Result<Vec<RecordBatch>> {
    let mut df = ctx.table(table).await?;
    if let Some(f) = filter {
        let predicate = df
            .parse_sql_expr(f)
            .map_err(|e| anyhow!("filter `{f}`: {}", one_line(&e.to_string())))?;
        df = df.filter(predicate)?;
    }
    let schema = df.schema().clone();
    let cosine = ctx.udf("cosine_similarity")?;
    let dense = cast(cosine.call(vec![ident("vector"), query]), DataType::Float64);
    let score = match hybrid {
        None => dense,
        Some((alpha, sparse_query)) => {
            if schema.field_with_unqualified_name(SPARSE_COLUMN).is_err() {
                bail!(
                    "the output has no `{SPARSE_COLUMN}` column for a hybrid search: run the pipeline again with embed.sparse"
                );
            }
            let sparse = ctx
                .udf("sparse_dot")?
                .call(vec![ident(SPARSE_COLUMN), sparse_query]);
            lit(f64::from(alpha)) * dense + lit(1.0 - f64::from(alpha)) * sparse
        }
    };
    let mut exprs = vec![ident("id"), score.alias("score")];
    for f in schema.fields() {
        let name = f.name();
        if name == "id" || name == "vector" || name == SPARSE_COLUMN {
            continue;
        }
        let column = ident(name.as_str());
        let is_text = matches!(
            f.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        );
        exprs.push(match width {
            Some(w) if is_text => {
                datafusion::functions::expr_fn::left(column, lit(w as i64)).alias(name)
            }
            _ => column,
        });
    }
    let mut df = df.select(exprs)?;
    // A chunked output holds several rows per source row: keep each source's best chunk.
    let chunked = ["source_id", "chunk"]
        .iter()
        .all(|c| schema.field_with_unqualified_name(c).is_ok());
    if chunked {
        use datafusion::logical_expr::ExprFunctionExt;
        let rank = datafusion::functions_window::expr_fn::row_number()
            .partition_by(vec![ident("source_id")])
            .order_by(vec![ident("score").sort(false, true)])
            .build()?
            .alias(RANK);
        df = df.window(vec![rank])?.filter(ident(RANK).eq(lit(1u64)))?;
        let keep: Vec<String> = df
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| n != RANK)
            .collect();
        df = df.select_columns(&keep.iter().map(String::as_str).collect::<Vec<_>>())?;
    }
    let df = df
        .sort(vec![ident("score").sort(false, true)])?
        .limit(0, Some(k))?;
    df.collect()
        .await
        .map_err(|e| anyhow!("query failed: {}", one_line(&e.to_string())))
}

/// The rank of a chunk within its source row, dropped before printing.
const RANK: &str = "__embedflow_rank";

/// Prints batches as JSON lines, each with `query_id`.
pub fn print_tagged(batches: &[RecordBatch], query_id: &serde_json::Value) -> Result<()> {
    use std::io::Write;
    let mut buf = Vec::new();
    {
        let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
        for b in batches {
            writer.write(b)?;
        }
        writer.finish()?;
    }
    let mut out = std::io::stdout().lock();
    for line in String::from_utf8_lossy(&buf).lines() {
        let mut row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line)?;
        row.insert("query_id".into(), query_id.clone());
        writeln!(out, "{}", serde_json::Value::Object(row))?;
    }
    Ok(())
}

/// Prints batches in the chosen format to stdout.
pub fn print(batches: &[RecordBatch], format: OutputFormat) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match format {
        OutputFormat::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(batches)?;
            writeln!(out, "{table}")?;
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
            for b in batches {
                writer.write(b)?;
            }
            writer.finish()?;
        }
    }
    Ok(())
}
