//! `src/plan/fingerprint.rs`

use std::sync::Arc;

use datafusion::arrow::array::{Int64Array, StringArray, StringViewArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::Field;
use datafusion::common::ScalarValue;
use datafusion::config::ConfigOptions;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs};
use embedflow::plan::fingerprint::*;

fn run(args: Vec<ColumnarValue>, rows: usize) -> Vec<String> {
    let udf = FingerprintUdf::udf();
    let arg_fields = args
        .iter()
        .map(|a| Arc::new(Field::new("a", a.data_type(), true)))
        .collect();
    let out = udf
        .invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: rows,
            return_field: Arc::new(Field::new("f", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        })
        .unwrap();
    let ColumnarValue::Array(a) = out else {
        panic!("an array")
    };
    let a = a.as_any().downcast_ref::<StringArray>().unwrap();
    a.iter().map(|s| s.unwrap().to_string()).collect()
}

fn label(s: &str) -> ColumnarValue {
    ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())))
}

#[test]
fn equal_values_match_and_any_change_shows() {
    let text = |v: Vec<Option<&str>>| ColumnarValue::Array(Arc::new(StringArray::from(v)));
    let a = run(
        vec![label("t"), text(vec![Some("x"), Some("x"), Some(""), None])],
        4,
    );
    assert_eq!(a[0], a[1]);
    assert_ne!(a[0], a[2]);
    assert_ne!(a[2], a[3], "empty and null differ");
    assert_eq!(a[0].len(), 32);
    // The same text in another layout hashes the same; another label does not.
    let view = ColumnarValue::Array(Arc::new(StringViewArray::from(vec![Some("x")])));
    assert_eq!(run(vec![label("t"), view], 1)[0], a[0]);
    assert_ne!(run(vec![label("u"), text(vec![Some("x")])], 1)[0], a[0]);
    // Several columns: a change in any of them shows.
    let n = |v: Vec<i64>| ColumnarValue::Array(Arc::new(Int64Array::from(v)));
    let m = run(
        vec![
            label("t,n"),
            text(vec![Some("x"), Some("x")]),
            n(vec![1, 2]),
        ],
        2,
    );
    assert_ne!(m[0], m[1]);
    // No columns at all: one constant.
    let c = run(vec![label("")], 2);
    assert_eq!(c[0], c[1]);
}
