//! Error kinds that decide the process exit code.
//!
//! Everything else travels as `anyhow::Error` with context naming the file, key, column or row.

use std::fmt;

/// Exit codes, documented in the README.
pub mod exit {
    /// The run finished and wrote everything.
    pub const OK: i32 = 0;
    /// The run failed: bad input data, model, runtime, I/O or sink error. Nothing was published.
    pub const FAILED: i32 = 1;
    /// The pipeline file or the command line is invalid: nothing was read or embedded.
    pub const CONFIG: i32 = 2;
}

/// An error in the pipeline file, its environment variables or a `--set` override.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// Builds an `anyhow::Error` carrying a [`ConfigError`].
pub fn config_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ConfigError(msg.into()))
}

/// The exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<ConfigError>()) {
        exit::CONFIG
    } else {
        exit::FAILED
    }
}
