//! Arrow rows → Pinecone upsert records, each serialized once to JSON.
//!
//! Metadata is mapped to what Pinecone accepts: strings, numbers, booleans and lists of strings;
//! nulls (and NaN) are left out; timestamps and dates become ISO 8601 strings. Column types that
//! have no such mapping are refused when the sink opens, before anything is embedded.

use anyhow::{Result, bail};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, FixedSizeListArray, Float32Array, Float64Array,
    Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, Schema};
use serde::Serialize;
use serde_json::{Map, Value};

use super::config::{OversizedMetadata, PineconeSinkSpec, limits as pinecone_limits};
use crate::embed::bm25::udf::{SPARSE_COLUMN, sparse_at};
use crate::error::config_error;

/// One record ready to send: its id and its serialized JSON object.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    pub id: String,
    pub json: Vec<u8>,
}

/// How a metadata column's values become JSON.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Integer,
    Float,
    Bool,
    /// Timestamps and dates, sent as ISO 8601 text.
    Temporal,
    TextList,
}

fn kind_of(t: &DataType) -> Option<Kind> {
    use DataType::*;
    Some(match t {
        Utf8 | LargeUtf8 | Utf8View => Kind::Text,
        Dictionary(_, v) if matches!(v.as_ref(), Utf8 | LargeUtf8 | Utf8View) => Kind::Text,
        Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 => Kind::Integer,
        UInt64 | Float16 | Float32 | Float64 | Decimal128(..) | Decimal256(..) => Kind::Float,
        Boolean => Kind::Bool,
        Timestamp(..) | Date32 | Date64 => Kind::Temporal,
        List(f) | LargeList(f) | ListView(f) | LargeListView(f)
            if matches!(f.data_type(), Utf8 | LargeUtf8 | Utf8View) =>
        {
            Kind::TextList
        }
        _ => return None,
    })
}

/// The columns a chunked output adds, sent as metadata whatever `metadata` lists.
pub const CHUNK_COLUMNS: [&str; 2] = ["source_id", "chunk"];

/// Turns batches of `id`, `vector` and metadata columns into upsert records.
pub struct RecordEncoder {
    columns: Vec<(String, Kind)>,
    policy: OversizedMetadata,
    truncate_field: Option<String>,
}

impl RecordEncoder {
    /// Checks the metadata columns against the plan's output schema.
    ///
    /// A chunked output (it has `source_id` and `chunk` columns) always sends those two, so an
    /// index can be searched one source row at a time and a source row's chunks found again.
    pub fn new(spec: &PineconeSinkSpec, schema: &Schema) -> Result<RecordEncoder> {
        let mut columns = Vec::new();
        let mut names = spec.metadata.clone();
        if CHUNK_COLUMNS
            .iter()
            .all(|c| schema.field_with_name(c).is_ok())
        {
            for c in CHUNK_COLUMNS {
                if !names.iter().any(|n| n == c) {
                    names.push(c.to_string());
                }
            }
        }
        for name in &names {
            let Ok(field) = schema.field_with_name(name) else {
                let available: Vec<&str> = schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .filter(|n| *n != "vector")
                    .collect();
                return Err(config_error(format!(
                    "sink.pinecone.metadata: no column `{name}` in the pipeline's output (available: {})",
                    available.join(", ")
                )));
            };
            if name == "vector" || name == SPARSE_COLUMN {
                return Err(config_error(format!(
                    "sink.pinecone.metadata: `{name}` is sent as the record's vector, not metadata"
                )));
            }
            let Some(kind) = kind_of(field.data_type()) else {
                return Err(config_error(format!(
                    "sink.pinecone.metadata: column `{name}` is {}, which Pinecone metadata cannot hold (string, number, boolean, list of strings); convert it in source.sql",
                    field.data_type()
                )));
            };
            if spec.truncate_field.as_deref() == Some(name.as_str()) && !matches!(kind, Kind::Text)
            {
                return Err(config_error(format!(
                    "sink.pinecone.truncate_field `{name}` is {}, not text",
                    field.data_type()
                )));
            }
            columns.push((name.clone(), kind));
        }
        Ok(RecordEncoder {
            columns,
            policy: spec.oversized_metadata,
            truncate_field: spec.truncate_field.clone(),
        })
    }

    /// An encoder for records that arrive serialized (replays): no metadata columns.
    pub fn without_metadata(spec: &PineconeSinkSpec) -> RecordEncoder {
        RecordEncoder {
            columns: Vec::new(),
            policy: spec.oversized_metadata,
            truncate_field: spec.truncate_field.clone(),
        }
    }

    /// Encodes every row of `batch`; an error names the row's id.
    pub fn encode(&self, batch: &RecordBatch) -> Result<Vec<EncodedRecord>> {
        let ids = column(batch, "id")?;
        let ids = cast(ids, &DataType::Utf8)?;
        let ids: &StringArray = ids.as_string();
        let vectors = column(batch, "vector")?;
        let vectors: &FixedSizeListArray = vectors.as_fixed_size_list();
        let values = vectors.values();
        let values: &Float32Array = values.as_primitive();
        let dim = vectors.value_length() as usize;
        // embed.sparse: each record's sparseValues.
        let sparse = batch.column_by_name(SPARSE_COLUMN).map(|c| c.as_struct());
        let meta: Vec<(&str, Kind, ArrayRef)> = self
            .columns
            .iter()
            .map(|(name, kind)| {
                Ok((
                    name.as_str(),
                    *kind,
                    normalize(column(batch, name)?, *kind)?,
                ))
            })
            .collect::<Result<_>>()?;

        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                bail!("row with a null id: the id column must not be null for Pinecone");
            }
            let id = ids.value(row);
            if id.is_empty() || id.len() > pinecone_limits::MAX_ID_BYTES {
                bail!(
                    "id `{}` is {} bytes; Pinecone ids are 1 to {} bytes",
                    id.chars().take(80).collect::<String>(),
                    id.len(),
                    pinecone_limits::MAX_ID_BYTES
                );
            }
            let start = (vectors.value_offset(row)) as usize;
            let vals = &values.values()[start..start + dim];
            if vals.iter().any(|v| !v.is_finite()) {
                bail!("id `{id}`: the vector holds a value that is not finite");
            }
            let mut metadata = Map::new();
            for (name, kind, array) in &meta {
                if let Some(v) = json_value(array, *kind, row) {
                    metadata.insert((*name).to_string(), v);
                }
            }
            self.fit_metadata(id, &mut metadata)?;
            // A text without a word has no sparse values: Pinecone takes none rather than empty.
            let sparse_values = sparse
                .and_then(|s| sparse_at(s, row))
                .filter(|s| !s.indices.is_empty())
                .map(|s| SparseWire {
                    indices: s.indices,
                    values: s.values,
                });
            let json = serde_json::to_vec(&Wire {
                id,
                values: vals,
                sparse_values,
                metadata: (!metadata.is_empty()).then_some(&metadata),
            })?;
            out.push(EncodedRecord {
                id: id.to_string(),
                json,
            });
        }
        Ok(out)
    }

    /// Encodes the metadata of every row of `batch` (an `id` column and metadata columns; those
    /// the sink sends but the batch lacks are left as they are in the index).
    pub fn encode_metadata(
        &self,
        batch: &RecordBatch,
    ) -> Result<Vec<(String, Map<String, Value>)>> {
        let ids = column(batch, "id")?;
        let ids = cast(ids, &DataType::Utf8)?;
        let ids: &StringArray = ids.as_string();
        let mut meta = Vec::new();
        for (name, kind) in &self.columns {
            if let Some(array) = batch.column_by_name(name) {
                meta.push((name.as_str(), *kind, normalize(array, *kind)?));
            }
        }
        let mut out = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            if ids.is_null(row) {
                bail!("row with a null id: the id column must not be null for Pinecone");
            }
            let id = ids.value(row);
            let mut metadata = Map::new();
            for (name, kind, array) in &meta {
                if let Some(v) = json_value(array, *kind, row) {
                    metadata.insert((*name).to_string(), v);
                }
            }
            self.fit_metadata(id, &mut metadata)?;
            out.push((id.to_string(), metadata));
        }
        Ok(out)
    }

    /// Applies the oversized-metadata policy.
    fn fit_metadata(&self, id: &str, metadata: &mut Map<String, Value>) -> Result<()> {
        let limit = pinecone_limits::MAX_METADATA_BYTES;
        let size = serde_json::to_vec(metadata)?.len();
        if size <= limit {
            return Ok(());
        }
        let field = match (self.policy, &self.truncate_field) {
            (OversizedMetadata::Truncate, Some(f)) => f,
            _ => bail!(
                "id `{id}`: metadata is {size} bytes, over Pinecone's {limit}-byte limit; send fewer columns, or set sink.pinecone.oversized_metadata: truncate with truncate_field"
            ),
        };
        let Some(Value::String(mut text)) = metadata.remove(field) else {
            bail!(
                "id `{id}`: metadata is {size} bytes, over Pinecone's {limit}-byte limit, and truncate_field `{field}` has no text to cut"
            );
        };
        // Serialized size can exceed the raw text (escapes): cut, measure, repeat.
        let mut excess = size - limit;
        loop {
            let mut cut = text.len().saturating_sub(excess);
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            metadata.insert(field.clone(), Value::String(text.clone()));
            let now = serde_json::to_vec(&*metadata)?.len();
            if now <= limit {
                tracing::debug!("id {id}: metadata field {field} cut from {size} to {now} bytes");
                return Ok(());
            }
            if text.is_empty() {
                bail!(
                    "id `{id}`: metadata is over Pinecone's {limit}-byte limit even with `{field}` empty"
                );
            }
            excess = now - limit;
        }
    }
}

#[derive(Serialize)]
struct Wire<'a> {
    id: &'a str,
    values: &'a [f32],
    #[serde(rename = "sparseValues", skip_serializing_if = "Option::is_none")]
    sparse_values: Option<SparseWire>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Map<String, Value>>,
}

/// Pinecone's `sparseValues` (and a hybrid query's `sparseVector`).
#[derive(Debug, Clone, Serialize)]
pub struct SparseWire {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef> {
    batch
        .column_by_name(name)
        .ok_or_else(|| anyhow::anyhow!("the pipeline's output has no `{name}` column"))
}

/// Casts a column to the one array type its kind is read from.
fn normalize(array: &ArrayRef, kind: Kind) -> Result<ArrayRef> {
    Ok(match kind {
        Kind::Text | Kind::Temporal => cast(array, &DataType::Utf8)?,
        Kind::Integer => cast(array, &DataType::Int64)?,
        Kind::Float => cast(array, &DataType::Float64)?,
        Kind::Bool => array.clone(),
        Kind::TextList => cast(
            array,
            &DataType::List(std::sync::Arc::new(
                datafusion::arrow::datatypes::Field::new_list_field(DataType::Utf8, true),
            )),
        )?,
    })
}

fn json_value(array: &ArrayRef, kind: Kind, row: usize) -> Option<Value> {
    if array.is_null(row) {
        return None;
    }
    Some(match kind {
        Kind::Text | Kind::Temporal => {
            let s: &StringArray = array.as_string();
            Value::String(s.value(row).to_string())
        }
        Kind::Integer => {
            let a: &Int64Array = array.as_primitive::<Int64Type>();
            Value::from(a.value(row))
        }
        Kind::Float => {
            let a: &Float64Array = array.as_primitive::<Float64Type>();
            serde_json::Number::from_f64(a.value(row)).map(Value::Number)?
        }
        Kind::Bool => {
            let a: &BooleanArray = array.as_boolean();
            Value::Bool(a.value(row))
        }
        Kind::TextList => {
            let list = array.as_list::<i32>().value(row);
            let items: &StringArray = list.as_string();
            Value::Array(
                items
                    .iter()
                    .flatten()
                    .map(|s| Value::String(s.to_string()))
                    .collect(),
            )
        }
    })
}
