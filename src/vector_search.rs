//! `vector_search('sink', <vector>, k [, filter [, <sparse vector>, alpha]])`: a SQL table
//! function over the pipeline's sink, returning `id`, `score` and `metadata` (a JSON object),
//! best first:
//!
//! ```sql
//! SELECT * FROM vector_search('sink', embed('how do I handle errors'), 5)
//! -- hybrid (embed.sparse): alpha x dense + (1 - alpha) x sparse, as `query --alpha`
//! SELECT * FROM vector_search('sink', embed('error E0502'), 5, NULL, bm25_query('error E0502'), 0.5)
//! ```
//!
//! Exact top-k by cosine similarity over a Parquet output (each source row's best chunk, for a
//! chunked output), or Pinecone's query API for a Pinecone index: the same code as `query`. The
//! optional filter is a SQL predicate over a Parquet output's columns, or a Pinecone metadata
//! filter (JSON) for an index.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, RecordBatch, RecordBatchOptions, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::lit;

use crate::config::Pipeline;
use crate::plan::session_context;
use crate::query::{self, PineconeQuery};
use crate::sink::SinkKind;

/// The table function, bound to one pipeline's sink.
#[derive(Debug)]
pub struct VectorSearch {
    pipeline: Pipeline,
}

impl VectorSearch {
    pub fn new(pipeline: Pipeline) -> VectorSearch {
        VectorSearch { pipeline }
    }
}

/// `id`, `score`, `metadata`.
pub fn result_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("metadata", DataType::Utf8, true),
    ]))
}

fn external(e: anyhow::Error) -> DataFusionError {
    DataFusionError::External(e.into())
}

/// Evaluates a constant argument (`embed('...')`, a literal) once, at planning.
fn constant(expr: &Expr, session: &dyn Session) -> Result<ScalarValue> {
    let physical = session.create_physical_expr(expr.clone(), &DFSchema::empty())?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let value = physical.evaluate(&one_row)?;
    match value {
        datafusion::logical_expr::ColumnarValue::Scalar(s) => Ok(s),
        datafusion::logical_expr::ColumnarValue::Array(a) => ScalarValue::try_from_array(&a, 0),
    }
}

fn floats(value: &ScalarValue) -> Result<Vec<f32>> {
    let array: ArrayRef = match value {
        ScalarValue::FixedSizeList(l) if !l.is_null(0) => l.value(0),
        ScalarValue::List(l) if !l.is_null(0) => l.value(0),
        other => {
            return plan_err!(
                "vector_search: the second argument must be a vector, e.g. embed('some text'), not {}",
                other.data_type()
            );
        }
    };
    let array = datafusion::arrow::compute::cast(&array, &DataType::Float32)?;
    Ok(array
        .as_primitive::<datafusion::arrow::datatypes::Float32Type>()
        .values()
        .to_vec())
}

impl TableFunctionImpl for VectorSearch {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let exprs = args.exprs();
        let session = args.session();
        if !matches!(exprs.len(), 3 | 4 | 6) {
            return plan_err!(
                "vector_search('sink', <vector>, k [, filter [, <sparse vector>, alpha]]) takes 3, 4 or 6 arguments, got {}",
                exprs.len()
            );
        }
        let text = |e: &Expr, what: &str| -> Result<String> {
            match constant(e, session)? {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => Ok(s),
                other => plan_err!("vector_search: {what} must be text, not {other}"),
            }
        };
        let table = text(&exprs[0], "the first argument (the sink table)")?;
        if table != "sink" {
            return plan_err!(
                "vector_search: `{table}` is not a sink table; the pipeline's sink is the table 'sink'"
            );
        }
        let vector = floats(&constant(&exprs[1], session)?)?;
        let k = match constant(&exprs[2], session)? {
            ScalarValue::Int64(Some(k)) if k > 0 => k as usize,
            ScalarValue::Int32(Some(k)) if k > 0 => k as usize,
            ScalarValue::UInt64(Some(k)) if k > 0 => k as usize,
            other => return plan_err!("vector_search: k must be a positive integer, not {other}"),
        };
        // NULL: no filter (so that the hybrid arguments can follow).
        let filter = match exprs.get(3) {
            Some(f) if !constant(f, session)?.is_null() => Some(text(f, "the filter")?),
            _ => None,
        };
        let hybrid = match exprs.get(4) {
            Some(sparse) => {
                let value = constant(sparse, session)?;
                let array = value.to_array()?;
                let Some(array) = array.as_struct_opt() else {
                    return plan_err!(
                        "vector_search: the fifth argument must be a sparse vector, e.g. bm25_query('some text'), not {}",
                        value.data_type()
                    );
                };
                let sparse = crate::embed::bm25::udf::sparse_at(array, 0).unwrap_or_default();
                let alpha = match constant(&exprs[5], session)? {
                    ScalarValue::Float64(Some(a)) => a as f32,
                    ScalarValue::Float32(Some(a)) => a,
                    ScalarValue::Int64(Some(a)) => a as f32,
                    other => {
                        return plan_err!("vector_search: alpha must be a number, not {other}");
                    }
                };
                if !(0.0..=1.0).contains(&alpha) {
                    return plan_err!(
                        "vector_search: alpha {alpha}: give a weight from 0 (sparse only) to 1 (dense only)"
                    );
                }
                Some((alpha, sparse))
            }
            None => None,
        };
        Ok(Arc::new(SearchTable {
            pipeline: self.pipeline.clone(),
            vector,
            k,
            filter,
            hybrid,
        }))
    }
}

/// One search, run when the plan is executed.
#[derive(Debug)]
struct SearchTable {
    pipeline: Pipeline,
    vector: Vec<f32>,
    k: usize,
    filter: Option<String>,
    /// A hybrid search: alpha and the sparse query vector.
    hybrid: Option<(f32, crate::embed::bm25::Sparse)>,
}

impl SearchTable {
    async fn search(&self) -> anyhow::Result<Vec<RecordBatch>> {
        match self.pipeline.sink.kind()? {
            SinkKind::Pinecone(spec) => {
                let filter = self
                    .filter
                    .as_deref()
                    .map(|f| {
                        serde_json::from_str::<serde_json::Value>(f).map_err(|e| {
                            anyhow::anyhow!(
                                "vector_search: the filter is not a JSON Pinecone filter ({e}): {f}"
                            )
                        })
                    })
                    .transpose()?;
                let q = PineconeQuery {
                    k: self.k,
                    filter,
                    namespace: spec.namespace.clone(),
                    width: None,
                    chunked: self.pipeline.embed.chunking.is_some(),
                };
                // Pinecone scores the dot products of the scaled vectors (hybrid_convex_scale).
                let (vector, sparse) = match &self.hybrid {
                    Some((alpha, s)) => (
                        self.vector.iter().map(|v| v * alpha).collect(),
                        Some(crate::sink::pinecone::records::SparseWire {
                            indices: s.indices.clone(),
                            values: s.values.iter().map(|v| v * (1.0 - alpha)).collect(),
                        }),
                    ),
                    None => (self.vector.clone(), None),
                };
                query::search_pinecone_vector(spec, &vector, sparse.as_ref(), &q).await
            }
            SinkKind::Parquet(_) => {
                let ctx = session_context(None);
                query::register_output(&ctx, &self.pipeline, "vectors").await?;
                let scalar = ScalarValue::FixedSizeList(Arc::new(
                    datafusion::arrow::array::FixedSizeListArray::try_new(
                        Arc::new(Field::new_list_field(DataType::Float32, true)),
                        self.vector.len() as i32,
                        Arc::new(Float32Array::from(self.vector.clone())),
                        None,
                    )?,
                ));
                let found = query::top_k(
                    &ctx,
                    "vectors",
                    lit(scalar),
                    self.k,
                    None,
                    self.filter.as_deref(),
                    match &self.hybrid {
                        Some((alpha, s)) => Some((*alpha, lit(sparse_scalar(s)?))),
                        None => None,
                    },
                )
                .await?;
                found.iter().map(as_metadata_json).collect()
            }
        }
    }
}

/// A sparse vector as a constant of the `sparse_values` type.
fn sparse_scalar(s: &crate::embed::bm25::Sparse) -> Result<ScalarValue> {
    let array = crate::embed::bm25::udf::sparse_array(&[Some(s.clone())])?;
    ScalarValue::try_from_array(&array, 0)
}

/// `id`, `score` and the other columns as one JSON object per row.
fn as_metadata_json(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let id = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
    let score = datafusion::arrow::compute::cast(batch.column(1), &DataType::Float32)?;
    let rest: Vec<usize> = (2..batch.num_columns()).collect();
    let metadata: ArrayRef = if rest.is_empty() {
        Arc::new(StringArray::from(vec![None::<&str>; batch.num_rows()]))
    } else {
        let projected = batch.project(&rest)?;
        let mut buf = Vec::new();
        {
            let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
            w.write(&projected)?;
            w.finish()?;
        }
        let text = String::from_utf8(buf)?;
        Arc::new(StringArray::from(text.lines().collect::<Vec<_>>()))
    };
    Ok(RecordBatch::try_new(
        result_schema(),
        vec![id, score, metadata],
    )?)
}

#[async_trait]
impl TableProvider for SearchTable {
    fn schema(&self) -> SchemaRef {
        result_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.search().await.map_err(external)?;
        let table = MemTable::try_new(result_schema(), vec![batches])?;
        table.scan(state, projection, filters, limit).await
    }
}
