//! Where tables and outputs live: local paths, or `s3://bucket/prefix` on S3 and S3-compatible
//! stores through `object_store`'s AmazonS3 client, registered with DataFusion per bucket.
//!
//! Reads stream: DataFusion's Parquet reader fetches footers and row groups with ranged GETs, so
//! a large table costs no more memory than a small one. The HTTP requests run on the I/O runtime
//! that opened the store, not on the plan's CPU runtime. Writes are multipart uploads that become
//! visible only when completed.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use datafusion::prelude::SessionContext;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use url::Url;

pub mod config;
pub mod delta;
pub mod errors;
pub mod lock;

use crate::error::config_error;
pub use config::{S3Spec, StorageSpec};

/// True for URLs handled by an object store (`s3://...`) rather than the local file system.
pub fn is_remote(path: &str) -> bool {
    path.contains("://") && !path.starts_with("file://")
}

/// True when a path holds glob characters.
pub fn is_glob(path: &str) -> bool {
    path.contains(['*', '?', '['])
}

/// A remote location: `s3://bucket/key`.
#[derive(Debug, Clone)]
pub struct RemoteUrl {
    /// `s3://bucket`, the key DataFusion's registry uses.
    pub store_url: Url,
    pub bucket: String,
    /// The key (prefix) inside the bucket, without a leading `/`.
    pub key: String,
}

impl RemoteUrl {
    pub fn parse(what: &str, path: &str) -> Result<RemoteUrl> {
        let url = Url::parse(path).map_err(|e| config_error(format!("{what}: {path}: {e}")))?;
        if url.scheme() != "s3" {
            return Err(config_error(format!(
                "{what}: {path}: unsupported scheme `{}://` (local paths and s3:// are supported)",
                url.scheme()
            )));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| config_error(format!("{what}: {path}: no bucket name")))?
            .to_string();
        let store_url = Url::parse(&format!("s3://{bucket}"))?;
        let key = path
            .strip_prefix(&format!("s3://{bucket}"))
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        Ok(RemoteUrl {
            store_url,
            bucket,
            key,
        })
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// An S3 client for `bucket`, configured the way AWS tools are: the `AWS_*` environment, with
/// the pipeline's `storage.s3` overrides on top.
pub fn s3_store(url: &str, bucket: &str, spec: Option<&S3Spec>) -> Result<Arc<dyn ObjectStore>> {
    let default = S3Spec::default();
    let spec = spec.unwrap_or(&default);
    let endpoint = spec
        .endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_S3"))
        .or_else(|| env("AWS_ENDPOINT_URL"));
    let region = spec
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| "us-east-1".into());
    let has_static_keys = env("AWS_ACCESS_KEY_ID").is_some();
    if !has_static_keys && env("AWS_SECRET_ACCESS_KEY").is_some() {
        return Err(config_error(format!(
            "{url}: AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not"
        )));
    }
    if has_static_keys && env("AWS_SECRET_ACCESS_KEY").is_none() {
        return Err(config_error(format!(
            "{url}: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not"
        )));
    }
    let other_source = env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
    if !has_static_keys && !other_source && !spec.anonymous && !spec.instance_metadata {
        let profile = env("AWS_PROFILE")
            .map(|p| format!(" (AWS_PROFILE={p} is set, but profiles from ~/.aws are not read: export the profile's keys, e.g. `eval \"$(aws configure export-credentials --profile {p} --format env)\"`)"))
            .unwrap_or_default();
        return Err(config_error(format!(
            "{url}: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary keys){profile}; for a public bucket set storage.s3.anonymous: true, on EC2/ECS storage.s3.instance_metadata: true"
        )));
    }
    let allow_http = spec.allow_http.unwrap_or_else(|| {
        endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    });
    // Client options first: they hold allow_http, which must not be reset afterwards.
    let mut builder = AmazonS3Builder::from_env()
        .with_client_options(
            object_store::ClientOptions::new()
                .with_connect_timeout(Duration::from_secs(5))
                .with_timeout(Duration::from_secs(120)),
        )
        .with_bucket_name(bucket)
        .with_region(region)
        .with_allow_http(allow_http)
        .with_virtual_hosted_style_request(!spec.force_path_style.unwrap_or(true))
        .with_skip_signature(spec.anonymous)
        .with_retry(object_store::RetryConfig {
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
            backoff: Default::default(),
        });
    if let Some(e) = endpoint {
        builder = builder.with_endpoint(e);
    }
    // Requests run on the runtime that opens the store: the I/O runtime. DataFusion's scan then
    // polls them from the plan runtime, whose threads are busy with inference, without doing
    // network work there (DataFusion's `thread_pools.rs` example).
    if let Ok(io) = tokio::runtime::Handle::try_current() {
        builder =
            builder.with_http_connector(object_store::client::SpawnedReqwestConnector::new(io));
    }
    let store = builder
        .build()
        .map_err(|e| config_error(format!("{url}: cannot configure S3: {e}")))?;
    Ok(Arc::new(store))
}

/// Reads the footer of the Parquet file at `path` (DataFusion's own footer reader): proves it
/// is readable Parquet, and gives its metadata.
pub async fn parquet_footer(
    store: &Arc<dyn ObjectStore>,
    path: &object_store::path::Path,
) -> Result<Arc<datafusion::parquet::file::metadata::ParquetMetaData>> {
    use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
    let meta = store.head(path).await?;
    Ok(DFParquetMetadata::new(store.as_ref(), &meta)
        .fetch_metadata()
        .await?)
}

/// Registers the object store a remote path needs with the session and returns it (`None` for
/// local paths).
pub fn register_store(
    ctx: &SessionContext,
    what: &str,
    path: &str,
    storage: &StorageSpec,
) -> Result<Option<Arc<dyn ObjectStore>>> {
    if !is_remote(path) {
        return Ok(None);
    }
    let remote = RemoteUrl::parse(what, path)?;
    let store = s3_store(path, &remote.bucket, storage.s3.as_ref())?;
    ctx.register_object_store(&remote.store_url, Arc::clone(&store));
    Ok(Some(store))
}

/// Checks that a local source path (file, directory or glob) exists, naming it when it does not.
/// Remote paths are checked when their table is registered.
pub fn check_local_source(table: &str, path: &str) -> Result<()> {
    if is_remote(path) {
        return Ok(());
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

/// The file name a folder output gets.
pub const OUTPUT_FILE: &str = "part-0.parquet";

/// True when a sink path names a Parquet file rather than a folder or prefix.
pub fn names_parquet_file(path: &str) -> bool {
    path.to_ascii_lowercase().ends_with(".parquet")
}

/// The output file of a local sink path: the path itself when it names a `.parquet` file, else
/// [`OUTPUT_FILE`] inside it.
pub fn local_output_file(path: &Path) -> std::path::PathBuf {
    if names_parquet_file(&path.to_string_lossy()) {
        path.to_path_buf()
    } else {
        path.join(OUTPUT_FILE)
    }
}

/// The output key of an `s3://` sink path's key, by the same rule.
pub fn remote_output_key(key: &str) -> String {
    if names_parquet_file(key) {
        key.to_string()
    } else if key.trim_matches('/').is_empty() {
        OUTPUT_FILE.to_string()
    } else {
        format!("{}/{OUTPUT_FILE}", key.trim_end_matches('/'))
    }
}

/// A place to write one output object.
pub struct OutputLocation {
    pub store: Arc<dyn ObjectStore>,
    pub path: object_store::path::Path,
    /// The location as the user wrote it (plus the file name), for messages.
    pub display: String,
    local_dir: Option<std::path::PathBuf>,
}

impl OutputLocation {
    /// `path` is a folder or prefix (the vectors go to `part-0.parquet` in it) or a `.parquet`
    /// file, local or `s3://`.
    pub fn for_parquet_sink(path: &str, storage: &StorageSpec) -> Result<OutputLocation> {
        Self::for_parquet_part(path, storage, None)
    }

    /// The output of one shard of a sharded run: `part-<I>.parquet` in the folder `path`.
    pub fn for_parquet_part(
        path: &str,
        storage: &StorageSpec,
        shard: Option<crate::shard::Shard>,
    ) -> Result<OutputLocation> {
        let part = |file: String| match shard {
            None => file,
            Some(s) => format!(
                "{}{}",
                file.strip_suffix(OUTPUT_FILE).unwrap_or(&file),
                format_args!("part-{}.parquet", s.index)
            ),
        };
        if let Some(s) = shard
            && names_parquet_file(path)
        {
            return Err(config_error(format!(
                "sink.parquet.path {path} names one file, but --shard {s} writes one part per shard: give a folder (each shard writes part-<I>.parquet in it)"
            )));
        }
        if is_remote(path) {
            let remote = RemoteUrl::parse("sink.parquet.path", path)?;
            let key = part(remote_output_key(&remote.key));
            let store = s3_store(path, &remote.bucket, storage.s3.as_ref())?;
            return Ok(OutputLocation {
                store,
                path: object_store::path::Path::from(key.as_str()),
                display: format!("s3://{}/{key}", remote.bucket),
                local_dir: None,
            });
        }
        let file = local_output_file(Path::new(path.strip_prefix("file://").unwrap_or(path)));
        let file = std::path::PathBuf::from(part(file.to_string_lossy().into_owned()));
        let absolute =
            std::path::absolute(&file).map_err(|e| anyhow!("sink.parquet.path {path}: {e}"))?;
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| std::path::PathBuf::from("/"));
        let object_path = object_store::path::Path::from_absolute_path(&absolute)
            .map_err(|e| anyhow!("sink.parquet.path {path}: {e}"))?;
        Ok(OutputLocation {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            path: object_path,
            display: file.display().to_string(),
            local_dir: Some(dir),
        })
    }

    pub fn is_remote(&self) -> bool {
        self.local_dir.is_none()
    }

    /// The local folder the output goes to (`None` for `s3://`).
    pub fn local_dir(&self) -> Option<&Path> {
        self.local_dir.as_deref()
    }

    /// The output's file name (`part-0.parquet`).
    pub fn file_name(&self) -> &str {
        self.path.filename().unwrap_or("part-0.parquet")
    }

    /// Fails early, before anything is embedded, when the output cannot be written: locally a
    /// temporary file, remotely a small probe object written and deleted beside the output.
    pub async fn check_writable(&self) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow!(
                    "output {} is not writable: cannot create {}: {e}",
                    self.display,
                    dir.display()
                )
            })?;
            tempfile::Builder::new()
                .prefix(".embedflow-write-check")
                .tempfile_in(dir)
                .map_err(|e| anyhow!("output {} is not writable: {e}", self.display))?;
            return Ok(());
        }
        // The bucket must exist (some S3-compatible servers create it on the first PUT).
        // Only a missing bucket or an unreachable endpoint fail here: a key allowed to write
        // but not to list is checked by the probe below.
        let parent = self.path.parts().count().saturating_sub(1);
        let prefix: object_store::path::Path = self.path.parts().take(parent).collect();
        if let Err(e) = self.store.list_with_delimiter(Some(&prefix)).await {
            let problem = errors::classify_with_probe(&e, Some(self.store.as_ref())).await;
            if matches!(
                problem,
                errors::StoreProblem::BucketMissing | errors::StoreProblem::Unreachable
            ) {
                bail!(
                    "output is not writable: {}",
                    errors::describe(&self.display, problem, &e)
                );
            }
        }
        let probe = object_store::path::Path::from(format!(
            "{}.embedflow-write-check-{}",
            self.path,
            std::process::id()
        ));
        self.store
            .put(&probe, bytes::Bytes::from_static(b"").into())
            .await
            .map_err(|e| {
                let problem = errors::classify(&e);
                anyhow!(
                    "output is not writable: {}",
                    errors::describe(&self.display, problem, &e)
                )
            })?;
        let _ = self.store.delete(&probe).await;
        Ok(())
    }
}

/// Reads a small file (local path or `s3://`) whole; `None` when it does not exist.
pub async fn read_small(path: &str, storage: &StorageSpec) -> Result<Option<Vec<u8>>> {
    if is_remote(path) {
        let url = RemoteUrl::parse(path, path)?;
        let store = s3_store(path, &url.bucket, storage.s3.as_ref())?;
        return match store
            .get(&object_store::path::Path::from(url.key.as_str()))
            .await
        {
            Ok(got) => Ok(Some(got.bytes().await?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(anyhow::anyhow!(e).context(format!("cannot read {path}"))),
        };
    }
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!(e).context(format!("cannot read {path}"))),
    }
}

/// Writes a small file (local path or `s3://`) whole: it appears complete or not at all.
pub async fn write_small(path: &str, storage: &StorageSpec, body: Vec<u8>) -> Result<()> {
    if is_remote(path) {
        let url = RemoteUrl::parse(path, path)?;
        let store = s3_store(path, &url.bucket, storage.s3.as_ref())?;
        store
            .put(
                &object_store::path::Path::from(url.key.as_str()),
                object_store::PutPayload::from(body),
            )
            .await?;
        return Ok(());
    }
    let target = Path::new(path);
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    std::io::Write::write_all(&mut tmp, &body)?;
    tmp.persist(target)?;
    Ok(())
}
