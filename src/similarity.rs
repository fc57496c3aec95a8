//! `cosine_similarity(a, b)`: a SQL function over two vectors (FixedSizeList or List of floats).
//!
//! Used by `embedflow query`, and by SQL users to rank rows against `embed('some text')`.
//! A constant argument (the usual case) is read once, not broadcast to every row.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type};
use datafusion::common::{Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct CosineSimilarity {
    signature: Signature,
}

impl Default for CosineSimilarity {
    fn default() -> Self {
        CosineSimilarity {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl CosineSimilarity {
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::default())
    }
}

fn is_vector(t: &DataType) -> bool {
    match t {
        DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f) => {
            f.data_type().is_floating()
        }
        _ => false,
    }
}

/// Row `i` of a vector column as f32s (None for a null row).
fn row(values: &ArrayRef, i: usize) -> Result<Option<Vec<f32>>> {
    if values.is_null(i) {
        return Ok(None);
    }
    let item = match values.data_type() {
        DataType::FixedSizeList(..) => values.as_fixed_size_list().value(i),
        DataType::List(_) => values.as_list::<i32>().value(i),
        DataType::LargeList(_) => values.as_list::<i64>().value(i),
        other => return exec_err!("cosine_similarity expects vectors, got {other}"),
    };
    let f = cast(&item, &DataType::Float32)?;
    Ok(Some(f.as_primitive::<Float32Type>().values().to_vec()))
}

fn cosine(a: &[f32], b: &[f32]) -> Result<f32> {
    if a.len() != b.len() {
        return exec_err!(
            "cosine_similarity: vectors have different lengths ({} and {})",
            a.len(),
            b.len()
        );
    }
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        dot += (*x as f64) * (*y as f64);
        na += (*x as f64) * (*x as f64);
        nb += (*y as f64) * (*y as f64);
    }
    Ok((dot / (na.sqrt() * nb.sqrt()).max(1e-12)) as f32)
}

impl ScalarUDFImpl for CosineSimilarity {
    fn name(&self) -> &str {
        "cosine_similarity"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [a, b] if is_vector(a) && is_vector(b) => Ok(arg_types.to_vec()),
            _ => plan_err!(
                "cosine_similarity(a, b) expects two vectors (lists of floats), got ({})",
                arg_types
                    .iter()
                    .map(|t| t.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float32)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [a, b] = args.args.as_slice() else {
            return exec_err!("cosine_similarity takes two arguments");
        };
        let n = args.number_rows;
        let to_col = |v: &ColumnarValue| -> Result<(ArrayRef, bool)> {
            Ok(match v {
                ColumnarValue::Array(a) => (Arc::clone(a), false),
                ColumnarValue::Scalar(s) => (s.to_array_of_size(1)?, true),
            })
        };
        let (a, a_const) = to_col(a)?;
        let (b, b_const) = to_col(b)?;
        let a_fixed = if a_const { Some(row(&a, 0)?) } else { None };
        let b_fixed = if b_const { Some(row(&b, 0)?) } else { None };
        let rows = if a_const && b_const { 1 } else { n };
        let mut out: Vec<Option<f32>> = Vec::with_capacity(rows);
        for i in 0..rows {
            let (row_a, row_b);
            let x = match &a_fixed {
                Some(v) => v.as_deref(),
                None => {
                    row_a = row(&a, i)?;
                    row_a.as_deref()
                }
            };
            let y = match &b_fixed {
                Some(v) => v.as_deref(),
                None => {
                    row_b = row(&b, i)?;
                    row_b.as_deref()
                }
            };
            out.push(match (x, y) {
                (Some(x), Some(y)) => Some(cosine(x, y)?),
                _ => None,
            });
        }
        let arr: ArrayRef = Arc::new(Float32Array::from(out));
        if a_const && b_const {
            Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&arr, 0)?,
            ))
        } else {
            Ok(ColumnarValue::Array(arr))
        }
    }
}
