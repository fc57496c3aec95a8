//! embedflow: declarative pipelines that turn tables of text into vector indexes.
//!
//! Data flow, one module per stage:
//! [`config`] (YAML pipeline) → [`plan`] (DataFusion session, sources, UDFs) →
//! [`embed`] (tokenizer + ONNX Runtime behind the `embed(text)` UDF) → [`sink`] (Parquet) →
//! [`run`] (drives the stream into the sink, progress and summary). [`query`] searches the output.

pub mod cli;
pub mod config;
pub mod embed;
pub mod error;
pub mod plan;
pub mod query;
pub mod report;
pub mod run;
pub mod similarity;
pub mod sink;
pub mod storage;
