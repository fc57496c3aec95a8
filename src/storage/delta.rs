//! Delta Lake tables (local or `s3://`), opened through `deltalake-core` on the same object
//! stores as everything else: the S3 client of [`super::s3_store`] (its endpoint, credentials and
//! I/O runtime), or the local file system.

use std::sync::Arc;

use anyhow::{Result, anyhow};
use deltalake_core::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use object_store::ObjectStore;
use url::Url;

use super::{RemoteUrl, StorageSpec, is_remote};

/// The table property that turns the change data feed on.
pub const CHANGE_DATA_FEED: &str = "delta.enableChangeDataFeed";

/// Where a Delta table lives: its URL and the object store rooted at its bucket (or `/`).
struct Location {
    url: Url,
    root: Arc<dyn ObjectStore>,
}

fn locate(what: &str, path: &str, storage: &StorageSpec) -> Result<Location> {
    if is_remote(path) {
        let remote = RemoteUrl::parse(what, path)?;
        let root = super::s3_store(path, &remote.bucket, storage.s3.as_ref())?;
        let key = remote.key.trim_matches('/');
        let url = Url::parse(&format!("s3://{}/{key}/", remote.bucket))
            .map_err(|e| anyhow!("{what}: {path}: {e}"))?;
        return Ok(Location { url, root });
    }
    let local = path.strip_prefix("file://").unwrap_or(path);
    let absolute = std::path::absolute(local).map_err(|e| anyhow!("{what}: {path}: {e}"))?;
    let url = Url::from_directory_path(&absolute)
        .map_err(|()| anyhow!("{what}: {path}: not an absolute path"))?;
    Ok(Location {
        url,
        root: Arc::new(object_store::local::LocalFileSystem::new()),
    })
}

/// Delta's log store for `s3://` tables: its default one (commits are create-only puts, which
/// S3 and S3-compatible stores take as `If-None-Match`), over the S3 client each table is opened
/// with. `deltalake-core` has log stores for local paths only; its S3 crate would bring a second
/// AWS client.
#[derive(Debug)]
struct S3LogStores;

impl deltalake_core::logstore::LogStoreFactory for S3LogStores {
    fn with_options(
        &self,
        prefixed_store: deltalake_core::logstore::ObjectStoreRef,
        root_store: deltalake_core::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake_core::logstore::StorageConfig,
    ) -> deltalake_core::DeltaResult<Arc<dyn deltalake_core::logstore::LogStore>> {
        Ok(deltalake_core::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_s3_log_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(scheme) = Url::parse("s3://") {
            deltalake_core::logstore::logstore_factories()
                .entry(scheme)
                .or_insert_with(|| Arc::new(S3LogStores));
        }
    });
}

fn builder(what: &str, path: &str, storage: &StorageSpec) -> Result<DeltaTableBuilder> {
    register_s3_log_stores();
    let Location { url, root } = locate(what, path, storage)?;
    // The store is rooted at the bucket (or `/`); deltalake prefixes it with the table's path.
    Ok(DeltaTableBuilder::from_url(url.clone())
        .map_err(|e| anyhow!("{what}: {path}: {e}"))?
        .with_storage_backend(root, url))
}

/// Opens the Delta table at `path`, at `version` or its latest. A folder that holds no Delta
/// log is an error that says so.
pub async fn open(
    what: &str,
    path: &str,
    storage: &StorageSpec,
    version: Option<u64>,
) -> Result<DeltaTable> {
    let mut b = builder(what, path, storage)?;
    if let Some(v) = version {
        b = b.with_version(v);
    }
    b.load().await.map_err(|e| match e {
        DeltaTableError::NotATable(_) => anyhow!(
            "{what} ({path}) is not a Delta table: it has no _delta_log folder with a commit"
        ),
        DeltaTableError::InvalidVersion(v) => {
            anyhow!("{what} ({path}): Delta version {v} does not exist (or its log was cleaned up)")
        }
        other => anyhow!("{what} ({path}): cannot read the Delta table: {other}"),
    })
}

/// The table at `path` for writing: loaded when it exists, empty (no log yet) when not.
pub async fn for_write(what: &str, path: &str, storage: &StorageSpec) -> Result<DeltaTable> {
    let mut table = builder(what, path, storage)?
        .build()
        .map_err(|e| anyhow!("{what} ({path}): {e}"))?;
    if !is_delta_table(path, storage).await {
        return Ok(table);
    }
    match table.load().await {
        Ok(()) | Err(DeltaTableError::NotATable(_)) => Ok(table),
        Err(e) => Err(anyhow!("{what} ({path}): cannot read the Delta table: {e}")),
    }
}

/// True when `path` is a folder (or prefix) holding a Delta log.
pub async fn is_delta_table(path: &str, storage: &StorageSpec) -> bool {
    if super::is_glob(path) {
        return false;
    }
    if !is_remote(path) {
        let local = path.strip_prefix("file://").unwrap_or(path);
        return std::path::Path::new(local).join("_delta_log").is_dir();
    }
    let Ok(Location { url, root }) = locate("table", path, storage) else {
        return false;
    };
    let prefix =
        object_store::path::Path::from(format!("{}/_delta_log/", url.path().trim_matches('/')));
    use futures::StreamExt;
    matches!(root.list(Some(&prefix)).next().await, Some(Ok(_)))
}

/// The version a loaded table was read at.
pub fn version_of(table: &DeltaTable) -> u64 {
    table.version().unwrap_or(0)
}

/// True when the table's change data feed is on (at the version loaded).
pub fn change_feed_enabled(table: &DeltaTable) -> bool {
    table.snapshot().is_ok_and(|s| {
        s.metadata()
            .configuration()
            .get(CHANGE_DATA_FEED)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    })
}

/// The loaded table as a DataFusion table of `ctx` (its object store registered there).
pub async fn provider(
    what: &str,
    path: &str,
    table: &DeltaTable,
    ctx: &datafusion::prelude::SessionContext,
) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| anyhow!("{what} ({path}): {e}"))?;
    let scan = table
        .table_provider()
        .build()
        .await
        .map_err(|e| anyhow!("{what} ({path}): cannot scan the Delta table: {e}"))?;
    Ok(Arc::new(scan))
}
