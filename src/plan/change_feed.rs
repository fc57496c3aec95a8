//! A Delta table's change data feed as an incremental run's source: instead of reading and
//! fingerprinting the whole table, the run reads the rows inserted, updated or deleted since the
//! version its state recorded.
//!
//! Per id, the feed's latest version decides: an `insert` or `update_postimage` there is the
//! row as it is now (classified against the state like any source row: an update that leaves
//! the text alone is not embedded again); an id the feed names whose latest version holds
//! neither was deleted. Update pre-images count as named, so an id computed from the text
//! (`embed.key`) that an update changed is deleted under its old value.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::JoinType;
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::prelude::{DataFrame, SessionContext, cast, col, ident, lit};
use deltalake_core::delta_datafusion::DeltaCdfTableProvider;

use super::source::{DeltaRead, SourceSpec};
use crate::embed::spec::EmbedSpec;
use crate::storage::StorageSpec;

const CHANGE_TYPE: &str = "_change_type";
const COMMIT_VERSION: &str = "_commit_version";
const LATEST: &str = "__ef_feed_latest";
const LATEST_ID: &str = "__ef_feed_id";

/// What a run read from a change feed.
pub struct ChangeFeed {
    /// The table's name and path.
    pub table: String,
    pub path: String,
    /// The version the state recorded (its changes were already applied).
    pub since: u64,
    /// The version read now.
    pub to: u64,
    /// The rows as they are now, for ids the feed names and the table still holds; the table's
    /// columns.
    pub rows: DataFrame,
    /// Every id the feed names (`__ef_id`, text).
    pub named: DataFrame,
    /// Ids the feed names that the table no longer holds (`__ef_id`, text).
    pub deleted: DataFrame,
}

/// The one Delta table an incremental run could follow through its change feed, or why not.
pub fn candidate<'a>(
    source: &SourceSpec,
    delta: &'a [DeltaRead],
) -> std::result::Result<&'a DeltaRead, String> {
    let [read] = delta else {
        return Err(String::new());
    };
    if source.tables.len() > 1 || source.sql.is_some() {
        return Err(format!(
            "source.sql is set: the change feed of table `{}` is used only when the pipeline reads the table itself, without SQL",
            read.name
        ));
    }
    if !read.change_feed {
        return Err(format!(
            "table `{}` has no change data feed (set the table property {} = true)",
            read.name,
            crate::storage::delta::CHANGE_DATA_FEED
        ));
    }
    Ok(read)
}

/// Reads the changes of `read`'s table after version `since` up to the version read.
pub async fn read(
    ctx: &SessionContext,
    read: &DeltaRead,
    since: u64,
    embed: &EmbedSpec,
    storage: &StorageSpec,
) -> Result<ChangeFeed> {
    let what = format!("table `{}`", read.name);
    let table = crate::storage::delta::open(&what, &read.path, storage, Some(read.version)).await?;
    let now = ctx.table(read.name.as_str()).await?;
    let columns: Vec<_> = now
        .schema()
        .fields()
        .iter()
        .map(|f| ident(f.name().as_str()))
        .collect();
    let feed = if since >= read.version {
        // Nothing committed since: an empty feed of the table's columns.
        now.limit(0, Some(0))?
            .with_column(CHANGE_TYPE, lit("insert"))?
            .with_column(COMMIT_VERSION, lit(read.version))?
    } else {
        let builder = table
            .scan_cdf()
            .with_starting_version(since + 1)
            .with_ending_version(read.version);
        let provider = DeltaCdfTableProvider::try_new(builder)
            .map_err(|e| anyhow!("{what}: cannot read its change data feed: {e}"))?;
        ctx.read_table(Arc::new(provider))?
    };
    // `concat(id)`, not the column itself under another name: DataFusion 55 loses a column's
    // alias across the feed's union of scans and then rejects the sorted plan its own sort
    // enforcement built on it ("does not satisfy order requirements").
    let id = cast(
        datafusion::functions::string::expr_fn::concat(vec![super::id_expr(feed.schema(), embed)?]),
        DataType::Utf8,
    );
    let feed = feed.with_column(crate::plan::SOURCE_ID_COLUMN, id)?;
    // Each id's changes in the latest version that names it (an aggregate and a join: they
    // spill, where a window over the feed would sort it whole).
    let latest = feed.clone().aggregate(
        vec![ident(crate::plan::SOURCE_ID_COLUMN).alias(LATEST_ID)],
        vec![max(col(COMMIT_VERSION)).alias(LATEST)],
    )?;
    let ranked = feed.join(
        latest,
        JoinType::Inner,
        &[crate::plan::SOURCE_ID_COLUMN, COMMIT_VERSION],
        &[LATEST_ID, LATEST],
        None,
    )?;
    let rows = ranked
        .clone()
        .filter(col(CHANGE_TYPE).in_list(vec![lit("insert"), lit("update_postimage")], false))?;
    let named = ranked
        .select(vec![ident(crate::plan::SOURCE_ID_COLUMN)])?
        .distinct()?;
    let present = rows.clone().select(vec![
        ident(crate::plan::SOURCE_ID_COLUMN).alias("__ef_present"),
    ])?;
    let deleted = named.clone().join(
        present,
        JoinType::LeftAnti,
        &[crate::plan::SOURCE_ID_COLUMN],
        &["__ef_present"],
        None,
    )?;
    Ok(ChangeFeed {
        table: read.name.clone(),
        path: read.path.clone(),
        since,
        to: read.version,
        rows: rows.select(columns)?,
        named,
        deleted,
    })
}
