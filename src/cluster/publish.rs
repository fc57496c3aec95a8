//! A cluster job's Parquet output: the executors write one part per partition into a staging
//! folder beside the output; the client, which holds the output's lock for the whole job,
//! publishes the parts only when the job succeeded, and discards them otherwise.
//!
//! Publishing moves each part into the output folder, then removes the parts of an earlier run
//! that this one did not write. A part that Ballista wrote twice (a task run again) has the same
//! name both times ([`crate::sink::part_name::PartName`]), so the output holds each row once.

use std::sync::Arc;

use anyhow::{Context, Result};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::error::config_error;
use crate::sink::parquet::config::ParquetSinkSpec;
use crate::sink::parquet::layout::is_part;
use crate::storage::lock::OutputLock;
use crate::storage::{OutputLocation, StorageSpec, names_parquet_file};

pub struct Staging {
    store: Arc<dyn ObjectStore>,
    /// The output folder, as an object path, and as the user wrote it.
    folder: Path,
    display: String,
    /// The staging folder, as an object path, and as executors open it.
    staging: Path,
    pub parts: String,
    local_staging: Option<std::path::PathBuf>,
    lock: OutputLock,
}

/// The name of a job's staging folder starts with this.
const STAGING_PREFIX: &str = ".embedflow-staging-";

/// Removes the staging folders in `folder` that a killed client left (local or `s3://`).
async fn remove_stale_staging(
    store: &Arc<dyn ObjectStore>,
    folder: &Path,
    local: Option<&std::path::Path>,
    shown: &str,
) {
    let Ok(listed) = store.list_with_delimiter(Some(folder)).await else {
        return;
    };
    for stale in listed
        .common_prefixes
        .iter()
        .filter(|p| p.filename().is_some_and(|n| n.starts_with(STAGING_PREFIX)))
    {
        let objects: Vec<object_store::ObjectMeta> = store
            .list(Some(stale))
            .try_collect()
            .await
            .unwrap_or_default();
        for o in &objects {
            let _ = store.delete(&o.location).await;
        }
        // Locally, the (now empty) folders themselves.
        if let (Some(local), Some(name)) = (local, stale.filename()) {
            let _ = std::fs::remove_dir_all(local.join(name));
        }
        tracing::info!(
            "{shown}: removed the staging folder {} that an earlier, stopped job left",
            stale.filename().unwrap_or_default()
        );
    }
}

impl Staging {
    /// Checks the output folder, takes its lock and names a fresh staging folder in it.
    pub async fn prepare(spec: &ParquetSinkSpec, storage: &StorageSpec) -> Result<Staging> {
        let path = spec.path.trim_end_matches('/');
        if names_parquet_file(path) {
            return Err(config_error(format!(
                "sink.parquet.path {path} names one file, but a cluster run writes one part per partition: give a folder (each partition writes one part in it)"
            )));
        }
        // The location of a plain run's file in that folder: the same lock, so a cluster run and
        // a local run never write the folder at once.
        let first = OutputLocation::for_parquet_sink(path, storage)?;
        first.check_writable().await?;
        let lock = OutputLock::acquire(
            Arc::clone(&first.store),
            Path::from(format!("{}.embedflow-lock", first.path)),
            format!("{}.embedflow-lock", first.display),
        )
        .await?;
        let folder: Path = first
            .path
            .parts()
            .take(first.path.parts().count().saturating_sub(1))
            .collect();
        // Only the lock's holder may clean up: what a killed client left is stale now.
        remove_stale_staging(&first.store, &folder, first.local_dir(), path).await;
        let job = format!("{STAGING_PREFIX}{}", super::job_stamp());
        let staging = folder.clone().join(job.as_str());
        let local_staging = first.local_dir().map(|d| d.join(&job));
        if let Some(dir) = &local_staging {
            // Executors write their parts into it, and never create it themselves.
            if let Err(e) = std::fs::create_dir_all(dir) {
                lock.release().await;
                anyhow::bail!("cannot create the staging folder {}: {e}", dir.display());
            }
        }
        let parts = match &local_staging {
            Some(dir) => dir.display().to_string(),
            None => format!("{path}/{job}"),
        };
        Ok(Staging {
            store: first.store,
            folder,
            display: path.to_string(),
            staging,
            parts,
            local_staging,
            lock,
        })
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<Path>> {
        Ok(self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .with_context(|| format!("cannot list {}", self.display))?
            .objects
            .into_iter()
            .map(|o| o.location)
            .filter(|p| p.filename().is_some_and(is_part))
            .collect())
    }

    /// Moves the job's parts into the output folder and removes the earlier run's other parts.
    /// Returns the number of parts published.
    pub async fn publish(self) -> Result<usize> {
        let result = self.publish_parts().await;
        self.cleanup().await;
        self.lock.release().await;
        result
    }

    async fn publish_parts(&self) -> Result<usize> {
        let staged = self.list(&self.staging).await?;
        let before = self.list(&self.folder).await?;
        let mut published = Vec::new();
        for part in &staged {
            let name = part.filename().unwrap_or_default();
            let target = self.folder.clone().join(name);
            self.store
                .rename(part, &target)
                .await
                .with_context(|| format!("cannot publish {}/{name}", self.display))?;
            published.push(target);
        }
        let replaced: Vec<&str> = before
            .iter()
            .filter(|p| !published.contains(p))
            .filter_map(|p| p.filename())
            .collect();
        if !replaced.is_empty() {
            tracing::info!(
                "{}: the job's parts replace the earlier run's; removing {}",
                self.display,
                replaced.join(", ")
            );
        }
        for old in before.iter().filter(|p| !published.contains(p)) {
            self.store
                .delete(old)
                .await
                .with_context(|| format!("cannot remove the earlier part {old}"))?;
        }
        Ok(published.len())
    }

    /// Discards the job's parts: the output stays as it was.
    pub async fn discard(self) {
        self.cleanup().await;
        self.lock.release().await;
    }

    async fn cleanup(&self) {
        let leftover: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.staging))
            .try_collect()
            .await
            .unwrap_or_default();
        for o in leftover {
            let _ = self.store.delete(&o.location).await;
        }
        if let Some(dir) = &self.local_staging {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
