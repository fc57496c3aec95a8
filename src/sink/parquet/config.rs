//! `sink.parquet:` settings.

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSinkSpec {
    /// Output directory (vectors land in `part-0.parquet`) or a `.parquet` file path; with
    /// `format: delta`, the Delta table's folder.
    pub path: String,
    /// Rows per Parquet row group: bounds the writer's memory.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// `parquet` (default): Parquet files, published atomically; `delta`: a Delta Lake table,
    /// one commit per run.
    #[serde(default, skip_serializing_if = "OutputFormat::is_parquet")]
    pub format: OutputFormat,
    /// A Delta output's commit: `overwrite` (default) replaces the table's rows with the run's,
    /// `append` adds them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<DeltaMode>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    #[default]
    Parquet,
    Delta,
}

impl OutputFormat {
    fn is_parquet(&self) -> bool {
        *self == OutputFormat::Parquet
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeltaMode {
    #[default]
    Overwrite,
    Append,
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
        if self.mode.is_some() && !self.is_delta() {
            return Err(invalid(
                "sink.parquet.mode",
                "is how a Delta output commits: set format: delta, or remove it",
            ));
        }
        if self.is_delta() && crate::storage::names_parquet_file(&self.path) {
            return Err(invalid(
                "sink.parquet.path",
                "names a .parquet file, but a Delta table is a folder: give the table's folder",
            ));
        }
        Ok(())
    }

    /// The output is a Delta table.
    pub fn is_delta(&self) -> bool {
        self.format == OutputFormat::Delta
    }

    /// A Delta output's commit mode.
    pub fn delta_mode(&self) -> DeltaMode {
        self.mode.unwrap_or_default()
    }
}
