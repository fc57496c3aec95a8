//! embedflow: declarative pipelines that turn tables of text into vector indexes.
//!
//! Data flow, one module per stage:
//! [`config`] (the YAML pipeline; it composes the stages' specs) → [`plan`] (DataFusion session,
//! sources, checks) → [`embed`] (tokenizer + ONNX Runtime behind the `embed(text)` UDF) →
//! [`sink`] (Parquet, Pinecone) → [`report`] (progress and summary).
//!
//! Running a pipeline: [`driver`] is the one job driver. Every run (local, `--shard`,
//! incremental, `--cluster`) is `driver::run` on an executor ([`driver::executor`]): it loads the
//! model, builds the plan, checks the ids with a query on the executor, lays an incremental run
//! out as phases ([`driver::incremental`], from [`incremental`]'s state and classification),
//! then runs each phase's plan through the writers ([`driver::writer`], which checkpoint an
//! incremental run's state; [`driver::partitioned`] is the sink as an execution node) and adds
//! up the summary. The executor is this machine (`driver::executor::Local`) or a Ballista
//! cluster ([`cluster`]). [`storage`] is where files live (local or S3); [`query`] searches the
//! output; [`signals`] turns SIGINT and SIGTERM into a clean stop.
//!
//! Module outline (`use` edges, drawn by reading `crate::` and `super::` paths with
//! `python3 scripts/module-graph.py src`, which finds no import circle between modules nor
//! between top-level stages). Each stage takes its own spec; only the layers above `config`
//! see the whole [`config::Pipeline`]:
//!
//! ```text
//! main → cli → cluster → driver → config → incremental ──→ plan → embed
//!          ↘ vector_search → query ↗  │   (state, classify,  ↗  (source, checks, shard filter,
//!                                     │    tracker)         │    fingerprint) ↘ storage → shard
//!                                     └──→ sink ────────────┘
//!                                         (parquet, pinecone)
//! config composes the specs: plan::source, embed::spec, sink, storage, incremental::config
//! leaves: error, report, signals, secret, shard, similarity
//! ```

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
pub mod secret;
pub mod shard;
pub mod signals;
pub mod similarity;
pub mod sink;
pub mod storage;
pub mod vector_search;
