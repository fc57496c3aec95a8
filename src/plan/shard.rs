//! `run --shard I/N`: one of N tasks processes only the rows whose id hashes to shard I, so N
//! mapped Airflow tasks or Kubernetes Indexed Jobs split a table with no coordinator.
//!
//! The hash is fixed and documented so any tool can reproduce it: the first 8 bytes of the
//! SHA-256 of the id's UTF-8 text, read as a big-endian integer, modulo N. In Python:
//! `int.from_bytes(hashlib.sha256(id.encode()).digest()[:8], "big") % n`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, UInt32Builder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, ScalarValue, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::{Expr, lit};
use sha2::{Digest, Sha256};

use crate::shard::Shard;

/// The shard (of `count`) an id belongs to.
pub fn shard_of(id: &str, count: u32) -> u32 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(count)) as u32
}

impl Shard {
    /// `shard_of(id, count) = index`, over an id expression.
    pub fn filter(&self, id: Expr) -> Expr {
        ScalarUDF::new_from_impl(ShardUdf::new())
            .call(vec![id, lit(self.count)])
            .eq(lit(self.index))
    }
}

/// `shard_of(id, n)`: see the module documentation. Null ids get a null shard.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ShardUdf {
    signature: Signature,
}

impl ShardUdf {
    fn new() -> ShardUdf {
        ShardUdf {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for ShardUdf {
    fn name(&self) -> &str {
        "shard_of"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt32)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [id, count] = args.args.as_slice() else {
            return exec_err!("shard_of(id, n) takes two arguments");
        };
        let count = match count {
            ColumnarValue::Scalar(ScalarValue::UInt32(Some(n))) if *n > 0 => *n,
            _ => return exec_err!("shard_of: n must be a positive UInt32 literal"),
        };
        let ids = cast(&id.to_array(args.number_rows)?, &DataType::Utf8)?;
        let ids = ids
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .expect("cast to Utf8 gives a StringArray");
        let mut out = UInt32Builder::with_capacity(ids.len());
        for i in 0..ids.len() {
            if ids.is_null(i) {
                out.append_null();
            } else {
                out.append_value(shard_of(ids.value(i), count));
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
