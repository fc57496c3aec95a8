//! Incremental runs: embed only what changed since the last run, resume after a crash.
//!
//! 1. The state ([`state`]) says, per source id, what the sink holds: fingerprints
//!    ([`crate::plan::fingerprint`]) of the text, the metadata and the embedding settings.
//! 2. The source is read against it ([`classify`]): new and changed rows are embedded; rows
//!    whose metadata alone changed are updated in place (Pinecone) or get their previous
//!    vector (Parquet); with `deletes: true`, ids gone from the source are deleted.
//! 3. The sink confirms what it holds ([`tracker`]), and confirmed rows are checkpointed into the
//!    state every `checkpoint_secs`, so a killed run resumes where it was.
//!
//! The driver lays an incremental run out as phases ([`crate::driver::incremental`]); this
//! module owns the state, the classification and the tracking.

pub mod classify;
pub mod config;
pub mod state;
pub mod tracker;

pub use config::IncrementalSpec;
