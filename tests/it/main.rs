//! The integration tests, in one test binary: each module is one area (its own doc says what it
//! covers), and `common` holds the helpers they share. One binary instead of one per area: the
//! test build links DataFusion, Ballista and the Delta kernel once, not fourteen times.
//!
//! Run one area with `cargo test --release --test it -- cluster::` (a name filter).

mod common;

mod bulk_import;
mod chunking;
mod cli;
mod cluster;
mod delta;
mod incremental;
mod model_families;
mod parity;
mod pinecone;
mod pinecone_server;
mod s3;
mod safety;
mod shards;
mod sparse;
mod units;
