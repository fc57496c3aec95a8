//! What the state may record, and when: a row goes into a checkpoint only once the sink holds
//! it. A Parquet output holds everything at once, when it is published; Pinecone confirms
//! vectors request by request, and a chunked row counts once all its chunks have landed and
//! the chunks it no longer has are deleted.

use std::collections::HashMap;

use anyhow::{Context, Result};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type};

use super::classify::{CHUNKS, META_FP, OLD_CHUNKS, SOURCE_ID, STATUS, TEXT_FP, UNCHANGED};
use super::state::StateRow;

struct Pending {
    /// Vectors of the row not yet confirmed.
    remaining: usize,
    row: StateRow,
    /// Vector ids the row had before and has no longer.
    stale: Vec<String>,
}

#[derive(Default)]
pub struct Tracker {
    /// Vector id -> source id, for vectors sent but not yet confirmed.
    vectors: HashMap<String, String>,
    pending: HashMap<String, Pending>,
    /// Rows the sink holds: ready for the next checkpoint.
    ready: Vec<StateRow>,
    /// Rows the sink holds once `stale` is deleted.
    after_delete: Vec<StateRow>,
    stale: Vec<String>,
}

/// The hidden columns of one batch, row by row.
pub struct HiddenRows {
    pub rows: Vec<(StateRow, Option<i32>)>,
}

fn text_column(batch: &RecordBatch, name: &str) -> Result<Option<Vec<Option<String>>>> {
    let Some(a) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let a = cast(a, &DataType::Utf8)?;
    Ok(Some(
        a.as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect(),
    ))
}

fn int_column(batch: &RecordBatch, name: &str) -> Result<Option<Vec<Option<i32>>>> {
    let Some(a) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let a = cast(a, &DataType::Int32)?;
    Ok(Some(a.as_primitive::<Int32Type>().iter().collect()))
}

/// The state rows a batch's hidden columns describe (rows without a status, or unchanged, are
/// not recorded again), each with the chunk count the state had.
pub fn hidden_rows(batch: &RecordBatch) -> Result<HiddenRows> {
    let n = batch.num_rows();
    let Some(status) = text_column(batch, STATUS)? else {
        return Ok(HiddenRows { rows: Vec::new() });
    };
    let ids = text_column(batch, SOURCE_ID)?.context("hidden source id column missing")?;
    let text = text_column(batch, TEXT_FP)?.context("hidden text fingerprint missing")?;
    let meta = text_column(batch, META_FP)?.context("hidden metadata fingerprint missing")?;
    let chunks = int_column(batch, CHUNKS)?.unwrap_or_else(|| vec![Some(0); n]);
    let old = int_column(batch, OLD_CHUNKS)?.unwrap_or_else(|| vec![None; n]);
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        if status[i].as_deref().is_none_or(|s| s == UNCHANGED) {
            continue;
        }
        let (Some(id), Some(text_fp), Some(meta_fp)) = (&ids[i], &text[i], &meta[i]) else {
            continue;
        };
        rows.push((
            StateRow {
                id: id.clone(),
                text_fp: text_fp.clone(),
                meta_fp: meta_fp.clone(),
                chunks: chunks[i].unwrap_or(0),
                deleted: false,
            },
            old[i],
        ));
    }
    Ok(HiddenRows { rows })
}

/// Vector ids a row had (`old` chunks) that it no longer has (`new`).
pub fn stale_ids(id: &str, old: Option<i32>, new: i32) -> Vec<String> {
    let Some(old) = old else { return Vec::new() };
    let now: std::collections::HashSet<String> =
        StateRow::vector_ids(id, new).into_iter().collect();
    StateRow::vector_ids(id, old)
        .into_iter()
        .filter(|v| !now.contains(v))
        .collect()
}

impl Tracker {
    /// Rows the sink already holds (Parquet: written into the output being published; rows
    /// updated or deleted synchronously).
    pub fn held(&mut self, rows: impl IntoIterator<Item = StateRow>) {
        self.ready.extend(rows);
    }

    /// Rows sent to a sink that confirms them later: each waits for all its vectors.
    pub fn sent(&mut self, rows: HiddenRows) {
        for (row, old) in rows.rows {
            let ids = StateRow::vector_ids(&row.id, row.chunks);
            let stale = stale_ids(&row.id, old, row.chunks);
            let entry = self.pending.entry(row.id.clone()).or_insert(Pending {
                remaining: 0,
                row,
                stale,
            });
            // A chunked row arrives once per chunk: count its vectors once.
            if entry.remaining == 0 {
                entry.remaining = ids.len();
                for v in ids {
                    self.vectors.insert(v, entry.row.id.clone());
                }
            }
        }
    }

    /// Vectors the sink confirmed.
    pub fn confirmed(&mut self, vector_ids: impl IntoIterator<Item = String>) {
        for v in vector_ids {
            let Some(source) = self.vectors.remove(&v) else {
                continue;
            };
            let Some(p) = self.pending.get_mut(&source) else {
                continue;
            };
            p.remaining = p.remaining.saturating_sub(1);
            if p.remaining == 0
                && let Some(p) = self.pending.remove(&source)
            {
                if p.stale.is_empty() {
                    self.ready.push(p.row);
                } else {
                    self.stale.extend(p.stale);
                    self.after_delete.push(p.row);
                }
            }
        }
    }

    /// Vector ids to delete before the rows waiting on them can be recorded.
    pub fn take_stale(&mut self) -> Vec<String> {
        std::mem::take(&mut self.stale)
    }

    /// The stale vectors were deleted: their rows are ready.
    pub fn stale_deleted(&mut self) {
        self.ready.append(&mut self.after_delete);
    }

    pub fn take_ready(&mut self) -> Vec<StateRow> {
        std::mem::take(&mut self.ready)
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Rows sent whose vectors are not all confirmed (they are embedded again next run).
    pub fn unconfirmed(&self) -> usize {
        self.pending.len() + self.after_delete.len()
    }
}
