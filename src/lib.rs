//! embedflow: declarative pipelines that turn tables of text into vector indexes.
//!
//! Data flow, one module per stage:
//! [`config`] (the YAML pipeline; it composes the stages' specs) → [`plan`] (DataFusion session,
//! sources, checks) → [`embed`] (tokenizer + ONNX Runtime behind the `embed(text)` UDF) →
//! [`sink`] (Parquet, Pinecone) → [`report`] (progress and summary).
//!
//! Running a pipeline: [`driver`] is the one job driver. Every run (local, `--shard`,
//! incremental, `--cluster`) is `driver::run` on an executor ([`driver::executor`]): it loads the
//! model, builds the plan, checks the ids with a query on the executor, lets [`incremental`]
//! classify the source against its state and lay out the phases, then runs each phase's plan
//! through the writers ([`driver::writer`], which checkpoint an incremental run's state) and
//! adds up the summary. The executor is this machine (`driver::executor::Local`) or a Ballista
//! cluster ([`cluster`]). [`storage`] is where files live (local or S3); [`query`] searches the
//! output; [`signals`] turns SIGINT and SIGTERM into a clean stop.
//!
//! Module outline (`use` edges, drawn by reading `crate::` and `super::` paths with
//! `python3 scripts/module-graph.py src`; no module imports back up the chain, so there is no
//! import circle between modules):
//!
//! ```text
//! main → cli → driver ──────────→ incremental → plan → embed → report
//!            ↘ cluster::client ─↗ (driver::run)  ↘ sink ──↗   ↘ storage
//!              cluster::phases → driver::executor (the cluster as an executor)
//! config ← (driver, incremental, cluster, plan, sink::table)
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
pub mod signals;
pub mod similarity;
pub mod sink;
pub mod storage;
pub mod vector_search;
