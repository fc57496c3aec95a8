//! Where tables and outputs live: local paths today, object stores by URL scheme.

use std::path::Path;

use anyhow::{Result, bail};

/// True for URLs handled by an object store (`s3://...`) rather than the local file system.
pub fn is_remote(path: &str) -> bool {
    path.contains("://") && !path.starts_with("file://")
}

/// True when a path holds glob characters.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// Checks that a local source path (file, directory or glob) exists, naming it when it does not.
pub fn check_local_source(table: &str, path: &str) -> Result<()> {
    if is_remote(path) {
        bail!("table `{table}`: {path}: remote storage is not supported yet (only local paths)");
    }
    let local = path.strip_prefix("file://").unwrap_or(path);
    if is_glob(local) {
        // The directory part before the first glob character must exist.
        let prefix: String = local.chars().take_while(|c| !"*?[".contains(*c)).collect();
        let dir = Path::new(&prefix)
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            bail!("table `{table}`: no such directory: {}", dir.display());
        }
        return Ok(());
    }
    match std::fs::metadata(local) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("table `{table}`: file not found: {local}")
        }
        Err(e) => bail!("table `{table}`: cannot read {local}: {e}"),
    }
}

/// A place to write one output object.
pub struct OutputLocation {
    pub store: std::sync::Arc<dyn object_store::ObjectStore>,
    pub path: object_store::path::Path,
    /// The location as the user wrote it, for messages.
    pub display: String,
    local_dir: Option<std::path::PathBuf>,
}

impl OutputLocation {
    /// `path` is a folder (the vectors go to `part-0.parquet` in it) or a `.parquet` file.
    pub fn for_parquet_sink(path: &str) -> Result<OutputLocation> {
        if is_remote(path) {
            bail!(
                "sink.parquet.path {path}: remote storage is not supported yet (only local paths)"
            );
        }
        let local = Path::new(path.strip_prefix("file://").unwrap_or(path));
        let file = if local.extension().is_some_and(|e| e == "parquet") {
            local.to_path_buf()
        } else {
            local.join("part-0.parquet")
        };
        let absolute = std::path::absolute(&file)
            .map_err(|e| anyhow::anyhow!("sink.parquet.path {path}: {e}"))?;
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| std::path::PathBuf::from("/"));
        let object_path = object_store::path::Path::from_absolute_path(&absolute)
            .map_err(|e| anyhow::anyhow!("sink.parquet.path {path}: {e}"))?;
        Ok(OutputLocation {
            store: std::sync::Arc::new(object_store::local::LocalFileSystem::new()),
            path: object_path,
            display: file.display().to_string(),
            local_dir: Some(dir),
        })
    }

    /// Fails early, before anything is embedded, when the output cannot be written.
    pub async fn check_writable(&self) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "output {} is not writable: cannot create {}: {e}",
                    self.display,
                    dir.display()
                )
            })?;
            tempfile::Builder::new()
                .prefix(".embedflow-write-check")
                .tempfile_in(dir)
                .map_err(|e| anyhow::anyhow!("output {} is not writable: {e}", self.display))?;
        }
        Ok(())
    }
}
