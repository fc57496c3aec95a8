//! `embed.chunking`: long texts split into windows measured with the model's own tokenizer, on
//! sentence and word boundaries where possible (the `text-splitter` crate), so all of a long
//! document is searchable instead of its first `max_seq_length` word pieces.
//!
//! `chunks(text)` is a DataFusion UDF returning `List<Struct<chunk: Int32, text: Utf8>>`; the plan
//! unnests it into one row per chunk ([`crate::plan`]).

pub mod spec;

pub use spec::ChunkingSpec;

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, Int32Builder, ListArray, StringBuilder, StructArray,
};
use datafusion::arrow::buffer::{NullBuffer, OffsetBuffer};
use datafusion::arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use text_splitter::{ChunkConfig, TextSplitter};
use tokenizers::Tokenizer;

use super::udf::string_rows;
use crate::error::{ConfigError, invalid};

/// The Arrow type `chunks(text)` returns.
pub fn chunk_fields() -> Fields {
    Fields::from(vec![
        Field::new("chunk", DataType::Int32, false),
        Field::new("text", DataType::Utf8, false),
    ])
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(
        DataType::Struct(chunk_fields()),
        true,
    )))
}

/// Splits texts into token-bounded chunks.
pub struct Chunker {
    splitter: TextSplitter<Tokenizer>,
    max_tokens: usize,
    overlap: usize,
}

impl std::fmt::Debug for Chunker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunker")
            .field("max_tokens", &self.max_tokens)
            .field("overlap", &self.overlap)
            .finish()
    }
}

impl Chunker {
    /// `tokenizer` is the model's; it is used untruncated, to measure.
    pub fn new(
        spec: &ChunkingSpec,
        tokenizer: &Tokenizer,
        max_seq_length: usize,
    ) -> Result<Chunker, ConfigError> {
        let max_tokens = spec.max_tokens_for(max_seq_length)?;
        let mut measure = tokenizer.clone();
        measure
            .with_truncation(None)
            .map_err(|e| ConfigError::new(format!("embed.chunking: tokenizer: {e}")))?;
        let config = ChunkConfig::new(max_tokens)
            .with_sizer(measure)
            .with_overlap(spec.overlap)
            .map_err(|e| invalid("embed.chunking.overlap", e.to_string()))?;
        Ok(Chunker {
            splitter: TextSplitter::new(config),
            max_tokens,
            overlap: spec.overlap,
        })
    }

    /// The chunks of one text, in order; an empty text is one empty chunk (it still gets a
    /// vector, as sentence-transformers gives one).
    pub fn chunks<'t>(&self, text: &'t str) -> Vec<&'t str> {
        let chunks: Vec<&str> = self.splitter.chunks(text).collect();
        if chunks.is_empty() { vec![""] } else { chunks }
    }
}

/// `chunks(text)`: a text's chunks with their numbers; null text gives a null list.
///
/// Its chunker is built here, or, in a plan that came over the wire (a cluster executor), from
/// the model's tokenizer the first time the function runs ([`ChunksUdf::deferred`]).
#[derive(Debug)]
pub struct ChunksUdf {
    chunking: ChunkingSpec,
    /// The model whose tokenizer measures the chunks.
    model: Box<super::EmbedSpec>,
    chunker: ChunkerSource,
    signature: Signature,
}

/// Loads the model named by an `embed:` spec (an executor's shared model cache).
pub type LoadModel = fn(&super::EmbedSpec) -> anyhow::Result<Arc<super::Embedder>>;

#[derive(Debug)]
enum ChunkerSource {
    Ready(Arc<Chunker>),
    Deferred {
        load: LoadModel,
        built: std::sync::OnceLock<Arc<Chunker>>,
    },
}

impl ChunksUdf {
    /// `chunks()` of `embedder`'s tokenizer.
    pub fn udf(spec: &ChunkingSpec, embedder: &super::Embedder) -> Result<ScalarUDF, ConfigError> {
        // A document prompt shares max_seq_length with each chunk.
        let chunker = Chunker::new(spec, embedder.tokenizer(), embedder.text_max_seq_length())?;
        Ok(ScalarUDF::new_from_impl(ChunksUdf {
            chunking: spec.clone(),
            model: Box::new(embedder.spec().clone()),
            chunker: ChunkerSource::Ready(Arc::new(chunker)),
            signature: Signature::string(1, Volatility::Immutable),
        }))
    }

    /// `chunks()` whose chunker is built from the model `model` (loaded by `load`) when the
    /// function first runs.
    pub fn deferred(chunking: ChunkingSpec, model: super::EmbedSpec, load: LoadModel) -> ScalarUDF {
        ScalarUDF::new_from_impl(ChunksUdf {
            chunking,
            model: Box::new(model),
            chunker: ChunkerSource::Deferred {
                load,
                built: std::sync::OnceLock::new(),
            },
            signature: Signature::string(1, Volatility::Immutable),
        })
    }

    /// The chunking settings and the model, as they travel in a plan.
    pub fn settings(&self) -> (&ChunkingSpec, &super::EmbedSpec) {
        (&self.chunking, &self.model)
    }

    fn chunker(&self) -> Result<&Chunker> {
        match &self.chunker {
            ChunkerSource::Ready(c) => Ok(c),
            ChunkerSource::Deferred { load, built } => {
                if let Some(c) = built.get() {
                    return Ok(c);
                }
                let embedder =
                    load(&self.model).map_err(|e| DataFusionError::External(e.into()))?;
                let chunker = Chunker::new(
                    &self.chunking,
                    embedder.tokenizer(),
                    embedder.text_max_seq_length(),
                )
                .map_err(|e| DataFusionError::External(e.into()))?;
                Ok(built.get_or_init(|| Arc::new(chunker)))
            }
        }
    }
}

impl PartialEq for ChunksUdf {
    fn eq(&self, other: &Self) -> bool {
        match (&self.chunker, &other.chunker) {
            (ChunkerSource::Ready(a), ChunkerSource::Ready(b)) => Arc::ptr_eq(a, b),
            _ => {
                self.chunking == other.chunking
                    && serde_json::to_string(&self.model).ok()
                        == serde_json::to_string(&other.model).ok()
            }
        }
    }
}
impl Eq for ChunksUdf {}
impl Hash for ChunksUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.chunking.max_tokens.hash(state);
        self.chunking.overlap.hash(state);
        self.model.model.hash(state);
    }
}

impl ScalarUDFImpl for ChunksUdf {
    fn name(&self) -> &str {
        "chunks"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("chunks(text) takes exactly one argument");
        };
        let array = arg.to_array(args.number_rows)?;
        let rows = string_rows(&array)?;
        let mut numbers = Int32Builder::new();
        let mut texts = StringBuilder::new();
        let mut offsets = vec![0i32];
        let mut valid = Vec::with_capacity(rows.len());
        let chunker = self.chunker()?;
        for row in &rows {
            if let Some(text) = row {
                for (n, chunk) in chunker.chunks(text).into_iter().enumerate() {
                    numbers.append_value(n as i32);
                    texts.append_value(chunk);
                }
            }
            valid.push(row.is_some());
            offsets.push(numbers.len() as i32);
        }
        let values = StructArray::try_new(
            chunk_fields(),
            vec![
                Arc::new(numbers.finish()) as ArrayRef,
                Arc::new(texts.finish()) as ArrayRef,
            ],
            None,
        )?;
        let DataType::List(item) = list_type() else {
            return Err(DataFusionError::Internal("chunks: not a list type".into()));
        };
        let nulls = NullBuffer::from(valid);
        let list = ListArray::try_new(
            item,
            OffsetBuffer::new(offsets.into()),
            Arc::new(values),
            (nulls.null_count() > 0).then_some(nulls),
        )?;
        Ok(ColumnarValue::Array(Arc::new(list) as ArrayRef))
    }
}
