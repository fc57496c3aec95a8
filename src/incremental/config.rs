//! `incremental:` in the pipeline: where the state lives and how the source is read against it.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IncrementalSpec {
    /// A folder (local path or `s3://bucket/prefix`) holding what earlier runs embedded: per id,
    /// fingerprints of the text, the metadata and the embedding settings.
    pub state: String,
    /// The source is the whole truth: ids that vanished from it are deleted from the sink.
    /// Default false, for sources that hold only each day's rows.
    #[serde(default)]
    pub deletes: bool,
    /// The state is checkpointed at least this often with the ids the sink has confirmed, so a
    /// run killed midway resumes where it was.
    #[serde(default = "default_checkpoint_secs")]
    pub checkpoint_secs: u64,
}

fn default_checkpoint_secs() -> u64 {
    30
}

impl IncrementalSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.state.trim().is_empty() {
            return Err(invalid(
                "incremental.state",
                "give a folder for the state, e.g. state: state/docs or s3://bucket/embedflow-state/docs",
            ));
        }
        if self.checkpoint_secs == 0 {
            return Err(invalid("incremental.checkpoint_secs", "must be at least 1"));
        }
        Ok(())
    }
}
