//! `sink.parquet:` settings.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// Output directory (vectors land in `part-0.parquet`) or a `.parquet` file path.
    pub path: String,
    /// Rows per Parquet row group: bounds the writer's memory.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
}

fn default_row_group_rows() -> usize {
    8192
}

impl ParquetSinkSpec {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.path.trim().is_empty() {
            return Err(invalid("sink.parquet.path", "is empty"));
        }
        if self.row_group_rows == 0 {
            return Err(invalid("sink.parquet.row_group_rows", "must be at least 1"));
        }
        Ok(())
    }
}
