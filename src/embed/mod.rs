//! Text → vectors: model resolution, ONNX Runtime, tokenisation, micro-batching and the
//! `embed(text)` DataFusion UDF.

pub mod batch;
pub mod bm25;
pub mod chunk;
pub mod encoder;
pub mod eval;
pub mod model;
pub mod prepare;
pub mod runtime;
pub mod setup;
pub mod spec;
pub mod udf;

pub use encoder::{Embedder, Side};
pub use spec::{Device, DuplicateIds, EmbedSpec, Precision};
