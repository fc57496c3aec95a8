//! embedflow: declarative pipelines that turn tables of text into vector indexes.
//!
//! Data flow, one module per stage:
//! [`config`] (the YAML pipeline; each stage owns its spec) → [`plan`] (DataFusion session,
//! sources, checks) → [`embed`] (tokenizer + ONNX Runtime behind the `embed(text)` UDF) →
//! [`sink`] (Parquet, Pinecone) → [`run`] (drives the stream into the sink) → [`report`]
//! (progress and summary). [`incremental`] runs embed only what changed since the last run.
//! [`storage`] is where files live (local or S3); [`query`] searches the
//! output; [`signals`] turns SIGINT and SIGTERM into a clean stop.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod embed;
pub mod error;
pub mod incremental;
pub mod plan;
pub mod query;
pub mod report;
pub mod run;
pub mod signals;
pub mod similarity;
pub mod sink;
pub mod storage;
pub mod vector_search;
