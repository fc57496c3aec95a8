//! Reading the source against the state: which rows are new, changed, changed in metadata
//! only, unchanged, and which ids vanished. All of it is DataFusion joins on the id, streamed.
//!
//! The frames built here carry hidden columns (`__ef_*`): the source id, the fingerprints, the
//! row's status and chunk counts. The runner records them in the state and strips them before
//! the sink sees a batch.

use anyhow::{Context, Result};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::JoinType;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::when;
use datafusion::prelude::{DataFrame, Expr, SessionContext, cast, col, ident, lit};

use crate::embed::spec::EmbedSpec;
use crate::plan::fingerprint::fingerprint_expr;

/// Hidden columns start with this.
pub const HIDDEN: &str = "__ef_";
/// The source row's id, as text.
pub const SOURCE_ID: &str = crate::plan::SOURCE_ID_COLUMN;
pub const TEXT_FP: &str = "__ef_text_fp";
pub const META_FP: &str = "__ef_meta_fp";
/// `new`, `changed`, `metadata` or `unchanged`.
pub const STATUS: &str = "__ef_status";
/// Chunks the row has now (0: not chunked).
pub const CHUNKS: &str = crate::plan::CHUNK_COUNT_COLUMN;
/// Chunks the state recorded for the row (null: the state does not hold it).
pub const OLD_CHUNKS: &str = "__ef_old_chunks";

pub const NEW: &str = "new";
pub const CHANGED: &str = "changed";
pub const METADATA: &str = "metadata";
pub const UNCHANGED: &str = "unchanged";

const S: &str = "__ef_s_";
const PREVIOUS_KEY: &str = "__ef_p_key";

/// The column a row's vector comes from: its text, or (`embed.vector`) the vector itself.
pub fn content(embed: &EmbedSpec) -> &String {
    embed.vector.as_ref().unwrap_or(&embed.text)
}

/// The source columns whose values a sink keeps as metadata: all but the id and text columns,
/// or, when the sink names its metadata columns, those of them that come from the source.
pub fn metadata_columns(
    source: &Schema,
    embed: &EmbedSpec,
    only: Option<&[String]>,
) -> Vec<String> {
    source
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .filter(|n| Some(n) != embed.id.as_ref() && n != content(embed))
        .filter(|n| only.is_none_or(|o| o.contains(n)))
        .collect()
}

/// The source read against the state.
pub struct Classified {
    /// Every source row: its columns, the hidden id, fingerprints, status and old chunk count.
    pub rows: DataFrame,
    /// State rows (`id`, `chunks`) whose id is gone from the source; only with `deletes: true`.
    pub vanished: Option<DataFrame>,
}

/// What the source is read against.
pub struct Against<'a> {
    /// The state (`None`: every row is new).
    pub state: Option<DataFrame>,
    /// The Parquet sink's previous output, a `key` column: a row the state holds but the output
    /// lacks counts as changed, so nothing the state promises is missing from the new output.
    pub previous_keys: Option<DataFrame>,
    /// This run's embedding settings fingerprint.
    pub embed_fp: &'a str,
    /// The source columns the metadata fingerprint covers.
    pub metadata: &'a [String],
    /// Find the ids gone from the source.
    pub deletes: bool,
}

/// Classifies the source rows.
pub fn classify(
    ctx: &SessionContext,
    embed: &EmbedSpec,
    source: DataFrame,
    against: Against<'_>,
) -> Result<Classified> {
    let Against {
        state,
        previous_keys,
        embed_fp,
        metadata,
        deletes,
    } = against;
    let schema = source.schema().clone();
    let fp = ctx
        .udf("fingerprint")
        .context("fingerprint() is not registered")?;
    let id = crate::plan::id_expr(&schema, embed)?;
    let mut exprs = vec![
        cast(id, DataType::Utf8).alias(SOURCE_ID),
        fingerprint_expr(&fp, std::slice::from_ref(content(embed))).alias(TEXT_FP),
        fingerprint_expr(&fp, metadata).alias(META_FP),
    ];
    exprs.extend(schema.fields().iter().map(|f| ident(f.name().as_str())));
    let keyed = source.select(exprs)?;
    let source_columns: Vec<Expr> = keyed
        .schema()
        .fields()
        .iter()
        .map(|f| ident(f.name().as_str()))
        .collect();

    let Some(state) = state else {
        let mut all = source_columns;
        all.push(lit(NEW).alias(STATUS));
        all.push(lit(datafusion::common::ScalarValue::Int32(None)).alias(OLD_CHUNKS));
        return Ok(Classified {
            rows: keyed.select(all)?,
            vanished: None,
        });
    };
    let s = |c: &str| format!("{S}{c}");
    let state = state.select(vec![
        cast(col("id"), DataType::Utf8).alias(s("id")),
        cast(col("text_fp"), DataType::Utf8).alias(s("text_fp")),
        cast(col("meta_fp"), DataType::Utf8).alias(s("meta_fp")),
        cast(col("embed_fp"), DataType::Utf8).alias(s("embed_fp")),
        col("chunks").alias(s("chunks")),
    ])?;
    let vanished = if deletes {
        let ids = keyed.clone().select(vec![ident(SOURCE_ID)])?;
        Some(
            state
                .clone()
                .join(ids, JoinType::LeftAnti, &[&s("id")], &[SOURCE_ID], None)?
                .select(vec![
                    ident(s("id")).alias("id"),
                    ident(s("chunks")).alias("chunks"),
                ])?,
        )
    } else {
        None
    };
    let mut joined = keyed.join(state, JoinType::Left, &[SOURCE_ID], &[&s("id")], None)?;
    let mut status = when(ident(s("id")).is_null(), lit(NEW)).when(
        ident(s("embed_fp"))
            .not_eq(lit(embed_fp))
            .or(ident(s("text_fp")).not_eq(ident(TEXT_FP))),
        lit(CHANGED),
    );
    if let Some(keys) = previous_keys {
        let keys = keys
            .select(vec![cast(col("key"), DataType::Utf8).alias(PREVIOUS_KEY)])?
            .distinct()?;
        joined = joined.join(keys, JoinType::Left, &[SOURCE_ID], &[PREVIOUS_KEY], None)?;
        status = status.when(ident(PREVIOUS_KEY).is_null(), lit(CHANGED));
    }
    let status = status
        .when(ident(s("meta_fp")).not_eq(ident(META_FP)), lit(METADATA))
        .otherwise(lit(UNCHANGED))?;
    let mut all = source_columns;
    all.push(status.alias(STATUS));
    all.push(ident(s("chunks")).alias(OLD_CHUNKS));
    Ok(Classified {
        rows: joined.select(all)?,
        vanished,
    })
}

/// Rows with one of `statuses`.
pub fn with_status(rows: &DataFrame, statuses: &[&str]) -> Result<DataFrame> {
    let list = statuses.iter().map(|s| lit(*s)).collect();
    Ok(rows.clone().filter(ident(STATUS).in_list(list, false))?)
}

/// The Parquet sink's rows for `carried` (unchanged and metadata-only source rows): the vector
/// (and chunk columns) from the previous output, everything else from the source; the output
/// schema `output`, plus the hidden columns.
pub fn carried_rows(
    carried: DataFrame,
    previous: DataFrame,
    output: &Schema,
    key: &str,
    from_previous: &[&str],
) -> Result<DataFrame> {
    let p = |c: &str| format!("__ef_p_{c}");
    let mut prev_cols = vec![cast(ident(key), DataType::Utf8).alias(PREVIOUS_KEY)];
    prev_cols.extend(from_previous.iter().map(|c| ident(*c).alias(p(c))));
    let previous = previous.select(prev_cols)?;
    let joined = carried.join(
        previous,
        JoinType::Inner,
        &[SOURCE_ID],
        &[PREVIOUS_KEY],
        None,
    )?;
    let mut exprs = Vec::new();
    for f in output.fields() {
        let name = f.name().as_str();
        let value = if from_previous.contains(&name) {
            ident(p(name))
        } else {
            ident(name)
        };
        exprs.push(cast(value, f.data_type().clone()).alias(name));
    }
    for hidden in [SOURCE_ID, TEXT_FP, META_FP, STATUS] {
        exprs.push(ident(hidden));
    }
    exprs.push(ident(OLD_CHUNKS).alias(CHUNKS));
    Ok(joined.select(exprs)?)
}

/// The previous output's rows whose source id is not in the source (kept when `deletes` is
/// off), in the output schema; missing columns are null.
pub fn orphan_rows(
    previous: DataFrame,
    source_ids: DataFrame,
    output: &Schema,
    key: &str,
) -> Result<DataFrame> {
    let mut cols: Vec<Expr> = previous
        .schema()
        .fields()
        .iter()
        .map(|f| ident(f.name().as_str()))
        .collect();
    cols.push(cast(ident(key), DataType::Utf8).alias(PREVIOUS_KEY));
    let previous = previous.select(cols)?;
    let orphans = previous.join(
        source_ids,
        JoinType::LeftAnti,
        &[PREVIOUS_KEY],
        &[SOURCE_ID],
        None,
    )?;
    previous_rows(orphans, output)
}

/// The previous output's rows in the output schema (missing columns are null).
pub fn previous_rows(previous: DataFrame, output: &Schema) -> Result<DataFrame> {
    let have: Vec<String> = previous
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let exprs = output
        .fields()
        .iter()
        .map(|f| {
            let name = f.name().as_str();
            let value = if have.iter().any(|h| h == name) {
                ident(name)
            } else {
                lit(datafusion::common::ScalarValue::Null)
            };
            cast(value, f.data_type().clone()).alias(name)
        })
        .collect::<Vec<_>>();
    Ok(previous.select(exprs)?)
}
