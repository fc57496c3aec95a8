//! `embed(text)`: a DataFusion scalar UDF returning `FixedSizeList<Float32, dim>`.
//!
//! DataFusion hands the UDF one record batch's text column at a time; the [`Embedder`] sorts the
//! rows by token count, packs micro-batches and restores the original order. Null text gives a
//! null vector.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    Array, ArrayRef, FixedSizeListArray, Float32Array, LargeStringArray, StringArray,
    StringViewArray,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::{DataFusionError, Result, ScalarValue, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use super::encoder::Side;
use super::{EmbedSpec, Embedder};

/// The Arrow type of one vector.
pub fn vector_type(dim: usize) -> DataType {
    DataType::FixedSizeList(vector_item_field(), dim as i32)
}

fn vector_item_field() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::Float32, true))
}

/// The model behind `embed()`: loaded here, or named by a plan that came over the wire (a
/// cluster executor), loaded on first use by `load` and shared by every task of the process.
enum Model {
    Loaded(Arc<Embedder>),
    Deferred {
        spec: Box<EmbedSpec>,
        dim: usize,
        load: fn(&EmbedSpec) -> anyhow::Result<Arc<Embedder>>,
        loaded: OnceLock<Arc<Embedder>>,
    },
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Model::Loaded(e) => write!(f, "{e:?}"),
            Model::Deferred { spec, dim, .. } => {
                write!(f, "{} ({dim} dimensions, deferred)", spec.model)
            }
        }
    }
}

#[derive(Debug)]
pub struct EmbedUdf {
    model: Model,
    /// Rows of a pipeline (its document prompt) or queries (its query prompt).
    side: Side,
    signature: Signature,
}

impl EmbedUdf {
    pub fn new(embedder: Arc<Embedder>) -> Self {
        EmbedUdf {
            model: Model::Loaded(embedder),
            side: Side::Document,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// `embed()` of queries: the model's query prompt before each text (`query`, `sql`).
    pub fn for_queries(embedder: Arc<Embedder>) -> ScalarUDF {
        ScalarUDF::new_from_impl(EmbedUdf {
            side: Side::Query,
            ..Self::new(embedder)
        })
    }

    /// `embed()` of a model given by its settings and width, loaded by `load` when the function
    /// first runs (planning and (de)serialising never load it).
    pub fn deferred(
        spec: EmbedSpec,
        dim: usize,
        load: fn(&EmbedSpec) -> anyhow::Result<Arc<Embedder>>,
    ) -> Self {
        EmbedUdf {
            model: Model::Deferred {
                spec: Box::new(spec),
                dim,
                load,
                loaded: OnceLock::new(),
            },
            side: Side::Document,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// The UDF ready to register on a `SessionContext`.
    pub fn udf(embedder: Arc<Embedder>) -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::new(embedder))
    }

    /// The model's settings, as they travel in a plan.
    pub fn spec(&self) -> &EmbedSpec {
        match &self.model {
            Model::Loaded(e) => e.spec(),
            Model::Deferred { spec, .. } => spec,
        }
    }

    pub fn dim(&self) -> usize {
        match &self.model {
            Model::Loaded(e) => e.dim(),
            Model::Deferred { dim, .. } => *dim,
        }
    }

    fn embedder(&self) -> Result<&Embedder> {
        match &self.model {
            Model::Loaded(e) => Ok(e),
            Model::Deferred {
                spec,
                dim,
                load,
                loaded,
            } => {
                if let Some(e) = loaded.get() {
                    return Ok(e);
                }
                let e = load(spec).map_err(|e| DataFusionError::External(e.into()))?;
                if e.dim() != *dim {
                    return exec_err!(
                        "embed(): model {} gives {} dimensions here, but the plan was made for {dim}: the client and this executor resolve the model differently",
                        spec.model,
                        e.dim()
                    );
                }
                Ok(loaded.get_or_init(|| e))
            }
        }
    }

    fn identity(&self) -> String {
        format!(
            "{}:{}:{:?}",
            serde_json::to_string(self.spec()).unwrap_or_default(),
            self.dim(),
            self.side
        )
    }
}

impl PartialEq for EmbedUdf {
    fn eq(&self, other: &Self) -> bool {
        match (&self.model, &other.model) {
            (Model::Loaded(a), Model::Loaded(b)) => Arc::ptr_eq(a, b) && self.side == other.side,
            _ => self.identity() == other.identity(),
        }
    }
}
impl Eq for EmbedUdf {}
impl Hash for EmbedUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.spec().model.hash(state);
        self.dim().hash(state);
    }
}

/// Borrows a string column as `Option<&str>` rows, whatever its string layout.
pub fn string_rows(array: &ArrayRef) -> Result<Vec<Option<&str>>> {
    let any = array.as_any();
    if let Some(a) = any.downcast_ref::<StringArray>() {
        Ok(a.iter().collect())
    } else if let Some(a) = any.downcast_ref::<StringViewArray>() {
        Ok(a.iter().collect())
    } else if let Some(a) = any.downcast_ref::<LargeStringArray>() {
        Ok(a.iter().collect())
    } else if array.data_type() == &DataType::Null {
        Ok(vec![None; array.len()])
    } else {
        exec_err!("embed(text) expects text, got {}", array.data_type())
    }
}

impl ScalarUDFImpl for EmbedUdf {
    fn name(&self) -> &str {
        "embed"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View] => Ok(arg_types.to_vec()),
            [DataType::Null] => Ok(vec![DataType::Utf8]),
            [DataType::Dictionary(_, v)]
                if matches!(
                    **v,
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
                ) =>
            {
                Ok(vec![DataType::Utf8])
            }
            [other] => plan_err!(
                "embed(text) expects a string argument, got {other}; cast it, e.g. embed(CAST(col AS VARCHAR))"
            ),
            _ => plan_err!(
                "embed(text) takes exactly one argument, got {}",
                arg_types.len()
            ),
        }
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(vector_type(self.dim()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("embed(text) takes exactly one argument");
        };
        let (array, scalar) = match arg {
            ColumnarValue::Array(a) => (Arc::clone(a), false),
            ColumnarValue::Scalar(s) => (s.to_array_of_size(1)?, true),
        };
        let rows = string_rows(&array)?;
        let result = self.embed_rows(&rows)?;
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &result, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

impl EmbedUdf {
    fn embed_rows(&self, rows: &[Option<&str>]) -> Result<ArrayRef> {
        let embedder = self.embedder()?;
        let dim = embedder.dim();
        let (values, tokens) = embedder
            .embed_counting_as(rows, self.side)
            .map_err(|e| DataFusionError::External(e.into()))?;
        crate::report::count_partition_tokens(tokens);
        let nulls = NullBuffer::from(rows.iter().map(Option::is_some).collect::<Vec<bool>>());
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        let list = FixedSizeListArray::try_new(
            vector_item_field(),
            dim as i32,
            Arc::new(Float32Array::from(values)),
            nulls,
        )?;
        Ok(Arc::new(list))
    }
}
