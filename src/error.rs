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
    /// The run finished but some rows could not be written; they are in the dead-letter file
    /// named in the summary.
    pub const PARTIAL: i32 = 3;
    /// Stopped by SIGINT (Ctrl-C): 128 + 2, as shells report it.
    pub const SIGINT: i32 = 130;
    /// Stopped by SIGTERM (Airflow, Kubernetes, systemd): 128 + 15.
    pub const SIGTERM: i32 = 143;
}

/// A run that finished with rows in the dead-letter file.
#[derive(Debug)]
pub struct PartialRun {
    pub rows_failed: u64,
    pub dead_letter: String,
}

impl fmt::Display for PartialRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "partial run: {} rows could not be written; they are in the dead-letter file {} (fix the cause and re-run: ids are stable, so rows already written are overwritten, not duplicated)",
            self.rows_failed, self.dead_letter
        )
    }
}

impl std::error::Error for PartialRun {}

static SECRETS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Remembers a secret so that [`redact`] removes it from anything printed.
pub fn register_secret(value: &str) {
    if value.len() >= 4
        && let Ok(mut s) = SECRETS.lock()
        && !s.iter().any(|v| v == value)
    {
        s.push(value.to_string());
    }
}

/// Replaces every known secret (registered ones and the usual credential variables) with `***`.
pub fn redact(text: &str) -> String {
    let mut out = text.to_string();
    let mut secrets: Vec<String> = SECRETS.lock().map(|s| s.clone()).unwrap_or_default();
    for var in [
        "PINECONE_API_KEY",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ] {
        if let Ok(v) = std::env::var(var)
            && v.len() >= 4
        {
            secrets.push(v);
        }
    }
    for s in secrets {
        out = out.replace(&s, "***");
    }
    out
}

/// An error in the pipeline file, its environment variables or a `--set` override: exit code 2,
/// nothing read or embedded. `key` is the dotted key at fault (`sink.parquet.path`), when one is.
#[derive(Debug)]
pub struct ConfigError {
    pub key: Option<String>,
    pub message: String,
    /// Where the key's value came from, when not from the file itself (`${VAR}`).
    pub origin: Option<String>,
}

impl ConfigError {
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: None,
            message: message.into(),
            origin: None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(key) = &self.key {
            write!(f, "{key}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(origin) = &self.origin {
            write!(f, " ({origin})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A [`ConfigError`] about one key.
pub fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: Some(key.to_string()),
        message: message.into(),
        origin: None,
    }
}

/// Builds an `anyhow::Error` carrying a [`ConfigError`].
pub fn config_error(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(ConfigError::new(msg))
}

/// The run was stopped by a signal (SIGINT or SIGTERM).
#[derive(Debug)]
pub struct Interrupted {
    pub signal: &'static str,
    /// What became of the output, for the one message.
    pub outcome: String,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "interrupted by {}: {}", self.signal, self.outcome)
    }
}

impl std::error::Error for Interrupted {}

/// Error messages stay on one line (DataFusion's can span several).
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The innermost cause of an error, on one line: DataFusion and object_store wrap their causes
/// with prefixes that repeat them ("Parquet error: Parquet error: ..."); the root says it once.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut current = err;
    while let Some(next) = current.source() {
        current = next;
    }
    one_line(&current.to_string())
}

/// An error chain as one line, each cause once. Library errors often wrap a cause by quoting it
/// ("External: Generic LocalFileSystem error: ...: No space left on device"): a cause that quotes
/// the next one is left out, so the line keeps the context added here and the innermost words.
pub fn describe(err: &anyhow::Error) -> String {
    redact(&join_causes(err.chain().map(|c| c.to_string())))
}

/// [`describe`] for a plain error and its sources.
pub fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    join_causes(std::iter::successors(Some(err), |e| e.source()).map(|e| e.to_string()))
}

fn join_causes(causes: impl Iterator<Item = String>) -> String {
    let texts: Vec<String> = causes.map(|c| one_line(&c)).collect();
    let mut out = String::new();
    for (i, text) in texts.iter().enumerate() {
        let quotes_next = texts
            .get(i + 1)
            .is_some_and(|next| text.contains(next.as_str()));
        if text.is_empty() || quotes_next || out.contains(text.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

/// The exit code for an error chain.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if let Some(i) = err.chain().find_map(|e| e.downcast_ref::<Interrupted>()) {
        if i.signal == "SIGTERM" {
            exit::SIGTERM
        } else {
            exit::SIGINT
        }
    } else if err.chain().any(|e| e.is::<ConfigError>()) {
        exit::CONFIG
    } else if err.chain().any(|e| e.is::<PartialRun>()) {
        exit::PARTIAL
    } else {
        exit::FAILED
    }
}
