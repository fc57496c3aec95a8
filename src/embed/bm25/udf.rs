//! `bm25(text)` (a document's sparse vector), `bm25_query(text)` (a query's) and
//! `sparse_dot(a, b)` (their dot product, Pinecone's sparse score), as DataFusion functions.
//! A sparse vector is `Struct<indices: List<UInt32>, values: List<Float32>>`, the shape of
//! Pinecone's `sparse_values` (in its bulk import files too).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float32Builder, Float64Array, ListBuilder, StructArray, UInt32Builder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Float32Type, UInt32Type};
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::{Bm25, Sparse};
use crate::embed::Side;
use crate::embed::udf::string_rows;

/// The column a pipeline's sparse vectors are in.
pub const SPARSE_COLUMN: &str = "sparse_values";

pub fn sparse_fields() -> Fields {
    Fields::from(vec![
        Field::new(
            "indices",
            DataType::List(Arc::new(Field::new("item", DataType::UInt32, true))),
            false,
        ),
        Field::new(
            "values",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            false,
        ),
    ])
}

pub fn sparse_type() -> DataType {
    DataType::Struct(sparse_fields())
}

/// Sparse vectors as an Arrow column (`None`: a null row).
pub fn sparse_array(rows: &[Option<Sparse>]) -> Result<ArrayRef> {
    let mut indices = ListBuilder::new(UInt32Builder::new());
    let mut values = ListBuilder::new(Float32Builder::new());
    for row in rows {
        let empty = Sparse::default();
        let s = row.as_ref().unwrap_or(&empty);
        indices.values().append_slice(&s.indices);
        indices.append(true);
        values.values().append_slice(&s.values);
        values.append(true);
    }
    let nulls = rows.iter().any(Option::is_none).then(|| {
        rows.iter()
            .map(Option::is_some)
            .collect::<Vec<bool>>()
            .into()
    });
    // The builders' item fields (`item`, nullable) are those of `sparse_fields`.
    let fields = sparse_fields();
    let indices: ArrayRef = Arc::new(indices.finish());
    let values: ArrayRef = Arc::new(values.finish());
    Ok(Arc::new(StructArray::try_new(
        fields,
        vec![indices, values],
        nulls,
    )?))
}

/// Reads row `i` of a sparse column (`None` when null).
pub fn sparse_at(array: &StructArray, i: usize) -> Option<Sparse> {
    if array.is_null(i) {
        return None;
    }
    let indices = array.column(0).as_list::<i32>().value(i);
    let values = array.column(1).as_list::<i32>().value(i);
    Some(Sparse {
        indices: indices.as_primitive::<UInt32Type>().values().to_vec(),
        values: values.as_primitive::<Float32Type>().values().to_vec(),
    })
}

/// `bm25(text)` or `bm25_query(text)`.
#[derive(Debug)]
pub struct Bm25Udf {
    bm25: Arc<Bm25>,
    side: Side,
    signature: Signature,
}

impl Bm25Udf {
    /// `bm25(text)`: documents.
    pub fn documents(bm25: Arc<Bm25>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Bm25Udf {
            bm25,
            side: Side::Document,
            signature: Signature::string(1, Volatility::Immutable),
        })
    }

    /// `bm25_query(text)`: queries.
    pub fn queries(bm25: Arc<Bm25>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Bm25Udf {
            bm25,
            side: Side::Query,
            signature: Signature::string(1, Volatility::Immutable),
        })
    }

    pub fn bm25(&self) -> &Arc<Bm25> {
        &self.bm25
    }
}

impl PartialEq for Bm25Udf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.bm25, &other.bm25) && self.side == other.side
    }
}
impl Eq for Bm25Udf {}
impl Hash for Bm25Udf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.bm25.params().n_docs.hash(state);
        (self.side == Side::Query).hash(state);
    }
}

impl ScalarUDFImpl for Bm25Udf {
    fn name(&self) -> &str {
        match self.side {
            Side::Document => "bm25",
            Side::Query => "bm25_query",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(sparse_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("{}(text) takes one argument", self.name());
        };
        let (array, scalar) = match arg {
            ColumnarValue::Array(a) => (Arc::clone(a), false),
            ColumnarValue::Scalar(s) => (s.to_array_of_size(1)?, true),
        };
        let rows: Vec<Option<Sparse>> = string_rows(&array)?
            .into_iter()
            .map(|t| {
                t.map(|t| match self.side {
                    Side::Document => self.bm25.encode_document(t),
                    Side::Query => self.bm25.encode_query(t),
                })
            })
            .collect();
        let out = sparse_array(&rows)?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

/// `sparse_dot(a, b)`: the dot product of two sparse vectors (0 where either is null).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SparseDot {
    signature: Signature,
}

impl SparseDot {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(SparseDot {
            signature: Signature::exact(vec![sparse_type(), sparse_type()], Volatility::Immutable),
        })
    }
}

fn as_struct(v: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    Ok(match v {
        ColumnarValue::Array(a) => Arc::clone(a),
        ColumnarValue::Scalar(s) => s.to_array_of_size(rows)?,
    })
}

impl ScalarUDFImpl for SparseDot {
    fn name(&self) -> &str {
        "sparse_dot"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [a, b] = args.args.as_slice() else {
            return exec_err!("sparse_dot(a, b) takes two sparse vectors");
        };
        let rows = args.number_rows;
        // A constant side (the query) is read once, into a map.
        let constant =
            |v: &ColumnarValue| -> Result<Option<HashMap<u32, f32>>> {
                let ColumnarValue::Scalar(_) = v else {
                    return Ok(None);
                };
                let one = as_struct(v, 1)?;
                Ok(sparse_at(one.as_struct(), 0)
                    .map(|s| s.indices.into_iter().zip(s.values).collect()))
            };
        let (column, fixed) = match (constant(a)?, constant(b)?) {
            (None, Some(q)) => (as_struct(a, rows)?, Some(q)),
            (Some(q), None) => (as_struct(b, rows)?, Some(q)),
            _ => (as_struct(a, rows)?, None),
        };
        let other = match fixed {
            Some(_) => None,
            None => Some(as_struct(b, rows)?),
        };
        let column = column.as_struct();
        let scores: Float64Array = (0..rows)
            .map(|i| {
                let Some(x) = sparse_at(column, i) else {
                    return Some(0.0);
                };
                let map = match (&fixed, &other) {
                    (Some(q), _) => std::borrow::Cow::Borrowed(q),
                    (None, Some(o)) => match sparse_at(o.as_struct(), i) {
                        Some(y) => std::borrow::Cow::Owned(
                            y.indices
                                .into_iter()
                                .zip(y.values)
                                .collect::<HashMap<_, _>>(),
                        ),
                        None => return Some(0.0),
                    },
                    (None, None) => return Some(0.0),
                };
                Some(
                    x.indices
                        .iter()
                        .zip(&x.values)
                        .map(|(k, v)| f64::from(*v) * f64::from(*map.get(k).unwrap_or(&0.0)))
                        .sum(),
                )
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(scores)))
    }
}
