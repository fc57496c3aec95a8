//! Checks on the source made before anything is embedded or written. They run over a frame of
//! the source ids alone (before chunking, with no `embed()` in it), so they cost a read of the
//! ids, not an embedding.

use anyhow::{Result, bail};
use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast as cast_array;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::functions_aggregate::expr_fn::{count, first_value, max, sum};
use datafusion::prelude::{DataFrame, cast, col, lit};
use futures::future::BoxFuture;

use crate::embed::DuplicateIds;
use crate::embed::spec::EmbedSpec;
use crate::plan::source::SourceSpec;

/// What the id scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdReport {
    /// Ids that appear on more than one row.
    pub duplicate_ids: u64,
    /// Rows beyond the first for each of those ids: what a sink that keeps one row per id drops.
    pub extra_rows: u64,
}

/// What the id is, for messages.
fn describe_id(embed: &EmbedSpec) -> String {
    match &embed.id {
        Some(c) => format!("embed.id: column `{c}`"),
        None if embed.key.is_empty() => format!(
            "the id (MD5 of the text column `{}`; set embed.id or embed.key to choose it)",
            embed.text
        ),
        None => format!("the id (MD5 of embed.key columns {})", embed.key.join(", ")),
    }
}

/// Runs one query of the checks to its end: here ([`collect_here`]), or as a job on a cluster.
pub type Collect<'a> =
    &'a (dyn Fn(DataFrame) -> BoxFuture<'static, Result<Vec<RecordBatch>>> + Sync);

/// Runs the query in this process.
pub fn collect_here(frame: DataFrame) -> BoxFuture<'static, Result<Vec<RecordBatch>>> {
    Box::pin(async move { Ok(frame.collect().await?) })
}

/// The first row's value of an integer column (0 when there is no row or it is null).
fn first_int(batches: &[RecordBatch], column: usize) -> Result<u64> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(0);
    };
    let a = cast_array(batch.column(column), &DataType::Int64)?;
    let a = a.as_primitive::<Int64Type>();
    Ok(if a.is_null(0) { 0 } else { a.value(0) as u64 })
}

/// Fails on null or empty ids, on ids longer than the sink's `max_id_bytes` and, unless
/// `embed.duplicate_ids: keep_last`, on ids shared by several rows, naming an example and the
/// counts.
pub async fn check_ids(
    ids: &DataFrame,
    embed: &EmbedSpec,
    max_id_bytes: Option<usize>,
) -> Result<IdReport> {
    check_ids_on(ids, embed, max_id_bytes, &collect_here).await
}

/// [`check_ids`], its aggregates run by `collect` (a cluster runs them as jobs, so the ids are
/// not read by one machine).
pub async fn check_ids_on(
    ids: &DataFrame,
    embed: &EmbedSpec,
    max_id_bytes: Option<usize>,
    collect: Collect<'_>,
) -> Result<IdReport> {
    let what = describe_id(embed);
    let id = cast(col("id"), DataType::Utf8);
    let ids = ids.clone().select(vec![id.alias("id")])?;

    let missing = ids
        .clone()
        .filter(col("id").is_null().or(col("id").eq(lit(""))))?
        .aggregate(vec![], vec![count(lit(1)).alias("n")])?;
    let missing = first_int(&collect(missing).await?, 0)?;
    if missing > 0 {
        bail!(
            "{what}: {missing} rows have a null or empty id; every row needs an id (filter them out in source.sql, or give them one)"
        );
    }

    if let Some(limit) = max_id_bytes {
        check_id_lengths(&ids, embed, &what, limit, collect).await?;
    }

    let per_id = ids
        .aggregate(vec![col("id")], vec![count(lit(1)).alias("n")])?
        .filter(col("n").gt(lit(1)))?;
    let totals = per_id.aggregate(
        vec![],
        vec![
            count(lit(1)).alias("ids"),
            sum(col("n")).alias("rows"),
            max(col("n")).alias("most"),
            first_value(col("id"), vec![col("n").sort(false, false)]).alias("example"),
        ],
    )?;
    let totals = collect(totals).await?;
    let Some(batch) = totals.iter().find(|b| b.num_rows() > 0) else {
        return Ok(IdReport::default());
    };
    let int = |i: usize| first_int(&totals, i);
    let (dup_ids, dup_rows, most) = (int(0)?, int(1)?, int(2)?);
    if dup_ids == 0 {
        return Ok(IdReport::default());
    }
    let example = cast_array(batch.column(3), &DataType::Utf8)?;
    let example = example.as_string::<i32>();
    let example = if example.is_null(0) {
        String::new()
    } else {
        example.value(0).to_string()
    };
    let report = IdReport {
        duplicate_ids: dup_ids,
        extra_rows: dup_rows - dup_ids,
    };
    match embed.duplicate_ids {
        DuplicateIds::Error => bail!(
            "{what}: {dup_ids} ids appear on more than one row ({dup_rows} rows in all), e.g. `{example}` on {most} rows; a sink keeps one vector per id, so the later rows would overwrite the earlier. Make the ids unique, or set embed.duplicate_ids: keep_last to keep one vector per id"
        ),
        DuplicateIds::KeepLast => {
            tracing::warn!(
                "{what}: {dup_ids} ids appear on more than one row, e.g. `{example}` on {most} rows; embed.duplicate_ids is keep_last, so the sink keeps one vector per id ({} rows fewer)",
                report.extra_rows
            );
            Ok(report)
        }
    }
}

/// Fails when an id is longer than the sink takes, naming one and the count, before anything is
/// embedded (a chunked row's vectors are `<id>#<n>`: the room for `#0` is counted).
async fn check_id_lengths(
    ids: &DataFrame,
    embed: &EmbedSpec,
    what: &str,
    limit: usize,
    collect: Collect<'_>,
) -> Result<()> {
    let room = if embed.chunking.is_some() {
        limit.saturating_sub(2)
    } else {
        limit
    };
    let length = datafusion::functions::expr_fn::octet_length(col("id"));
    let found = ids
        .clone()
        .filter(length.clone().gt(lit(room as i64)))?
        .aggregate(
            vec![],
            vec![
                count(lit(1)).alias("n"),
                first_value(col("id"), vec![length.sort(false, false)]).alias("example"),
            ],
        )?;
    let found = collect(found).await?;
    let Some(batch) = found.iter().find(|b| b.num_rows() > 0) else {
        return Ok(());
    };
    let n = first_int(&found, 0)?;
    if n == 0 {
        return Ok(());
    }
    let example = cast_array(batch.column(1), &DataType::Utf8)?;
    let example = example.as_string::<i32>().value(0);
    let chunked = if room < limit {
        " (with embed.chunking, room is kept for the chunk suffix `#N`)"
    } else {
        ""
    };
    bail!(
        "{what}: {n} ids are longer than the {limit} bytes a Pinecone id may have{chunked}, e.g. `{}…` ({} bytes); shorten them in source.sql (e.g. md5(id)), or leave embed.id unset to use the MD5 of the text",
        example.chars().take(60).collect::<String>(),
        example.len()
    )
}

/// After a scan failed inside Parquet decoding (typed: a Parquet error in the chain), finds the
/// table and text column that hold it by reading each text column alone. A Parquet text column
/// with bytes that are not UTF-8 is the usual cause; the error itself names neither.
pub async fn locate_parquet_error(
    ctx: &datafusion::prelude::SessionContext,
    source: &SourceSpec,
) -> Option<(String, String)> {
    for name in source.tables.keys() {
        let Ok(table) = ctx.table(name.as_str()).await else {
            continue;
        };
        let columns: Vec<String> = table
            .schema()
            .fields()
            .iter()
            .filter(|f| {
                matches!(
                    f.data_type(),
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                )
            })
            .map(|f| f.name().clone())
            .collect();
        for column in columns {
            // Lengths need the values decoded (a count could come from the file's statistics).
            let length = datafusion::functions::expr_fn::character_length(
                datafusion::prelude::ident(&column),
            );
            let scan = table.clone().aggregate(vec![], vec![sum(length)]);
            let Ok(scan) = scan else { continue };
            if let Err(e) = scan.collect().await
                && crate::storage::errors::classify(&e)
                    == crate::storage::errors::StoreProblem::NotParquet
            {
                return Some((name.clone(), column));
            }
        }
    }
    None
}
