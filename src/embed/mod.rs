//! Text → vectors: model resolution, ONNX Runtime, tokenisation, micro-batching and the
//! `embed(text)` DataFusion UDF.

pub mod batch;
pub mod encoder;
pub mod eval;
pub mod model;
pub mod prepare;
pub mod runtime;
pub mod udf;

pub use encoder::{EmbedOptions, Embedder};
