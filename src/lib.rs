//! embedflow: declarative pipelines that turn tables of text into vector indexes.
//!
//! Data flow, one module per stage:
//! [`config`] (the YAML pipeline; it composes the stages' specs) → [`plan`] (DataFusion session,
//! sources, checks) → [`embed`] (tokenizer + ONNX Runtime behind the `embed(text)` UDF) →
//! [`sink`] (Parquet, Pinecone) → [`report`] (progress and summary).
//!
//! Running a pipeline: [`driver`] holds what every way of running one shares (loading the
//! model, the destination's checks and opening the sink, the plan's own CPU runtime and its
//! bounded stream); [`run`] runs one on this machine, [`incremental`] one that embeds only what
//! changed (on this machine or, through the same driver, on a cluster), [`cluster`] one on a
//! Ballista cluster. [`storage`] is where files live (local or
//! S3); [`query`] searches the output; [`signals`] turns SIGINT and SIGTERM into a clean stop.
//!
//! Module outline (`use` edges, drawn by reading `crate::` and `super::` paths; no module
//! imports back up the chain, so there is no import circle between modules):
//!
//! ```text
//! main → cli → run ───────→ incremental → driver → plan → embed → report
//!            ↘ cluster::client ─↗    ↑           ↘ sink ──↗   ↘ storage
//!              cluster::phases ──────┘ (an incremental run's executor on the cluster)
//! config ← (driver, run, incremental, cluster, plan, sink::table)
//! config → specs only: plan::source, embed::spec, sink, storage, incremental::config
//! ```
//!
//! Still to untangle (top-level stages, not modules): `plan`, `sink::table` and
//! `incremental::classify` take the whole [`config::Pipeline`] rather than their own specs, and
//! `storage` names a shard's part with [`plan::shard::Shard`].

pub mod cli;
pub mod cluster;
pub mod config;
pub mod driver;
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
