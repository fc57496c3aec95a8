//! The dead-letter file: rows that could not be written, one JSON object per line,
//! `{"error": "...", "namespace": "...", "vector": {"id", "values", "metadata"}}`, so nothing
//! computed is lost and the rows can be inspected or upserted again.
//!
//! The file is created on the first failed row only; a clean run leaves none.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::batcher::UpsertBatch;

pub struct DeadLetter {
    path: PathBuf,
    namespace: String,
    file: Option<std::io::BufWriter<std::fs::File>>,
    rows: u64,
}

impl DeadLetter {
    pub fn new(path: PathBuf, namespace: Option<&str>) -> DeadLetter {
        DeadLetter {
            path,
            namespace: namespace.unwrap_or("").to_string(),
            file: None,
            rows: 0,
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    pub fn write(&mut self, batch: &UpsertBatch, reason: &str) -> Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).ok();
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .with_context(|| {
                    format!(
                        "cannot open the dead-letter file {} for {} rows that could not be written",
                        self.path.display(),
                        batch.len()
                    )
                })?;
            self.file = Some(std::io::BufWriter::new(f));
        }
        let out = self.file.as_mut().context("dead-letter file not open")?;
        let prefix = format!(
            "{{\"error\":{},\"namespace\":{},\"vector\":",
            serde_json::to_string(reason)?,
            serde_json::to_string(&self.namespace)?
        );
        for r in &batch.records {
            out.write_all(prefix.as_bytes())?;
            out.write_all(&r.json)?;
            out.write_all(b"}\n")?;
        }
        self.rows += batch.len() as u64;
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if let Some(f) = self.file.as_mut() {
            f.flush()
                .with_context(|| format!("cannot write {}", self.path.display()))?;
        }
        Ok(())
    }
}
