//! A Pinecone-compatible HTTP server for tests, benchmarks and local development.
//!
//! It speaks the parts of Pinecone's REST API that embedflow and the official SDKs use, with
//! Pinecone's request and response shapes, limits and error bodies (see `pinecone-api.md` in the
//! project's shared design notes):
//!
//! - control plane on its own port: `GET /indexes/{name}`, whose `host` (no scheme) points at
//! - one data-plane port per index, as Pinecone Local does: `POST /vectors/upsert`, `POST /query`,
//!   `GET /vectors/fetch`, `GET /vectors/list`, `POST /vectors/update`, `POST /vectors/delete`,
//!   `POST /describe_index_stats`, and bulk import (`/bulk/imports`: start, describe, list,
//!   cancel), which reads Parquet files from an S3-compatible store ([`ImportStorage`]).
//!
//! Every request needs the `Api-Key` header. Data-plane requests can be hit by injected faults
//! ([`Faults`]): added latency, 429 with `Retry-After`, 500, 503 and dropped connections (before
//! or after the request was applied, as a real network drop can be either).

mod data_plane;
mod faults;
mod filter;
mod imports;
mod limits;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;

pub use faults::{FaultCounts, Faults};
pub use imports::ImportStorage;
pub use store::{Metric, Record, SparseValues};

use store::Index;

/// One index the server hosts.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    pub name: String,
    pub dimension: usize,
    pub metric: Metric,
}

impl IndexConfig {
    pub fn new(name: &str, dimension: usize) -> IndexConfig {
        IndexConfig {
            name: name.to_string(),
            dimension,
            metric: Metric::Cosine,
        }
    }
}

/// What the server serves and how badly it behaves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The only key accepted in `Api-Key`.
    pub api_key: String,
    pub indexes: Vec<IndexConfig>,
    /// Faults injected on data-plane requests.
    pub faults: Faults,
    /// Address to bind the control plane to; index ports are chosen by the OS.
    pub bind: SocketAddr,
    /// Where bulk imports read their files (none: `/bulk/imports` answers that it is not set up).
    pub import_storage: Option<ImportStorage>,
}

impl ServerConfig {
    pub fn new(api_key: &str, indexes: Vec<IndexConfig>) -> ServerConfig {
        ServerConfig {
            api_key: api_key.to_string(),
            indexes,
            faults: Faults::default(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            import_storage: None,
        }
    }
}

/// A running server. Dropping it stops it.
pub struct PineconeServer {
    controller: SocketAddr,
    indexes: BTreeMap<String, (SocketAddr, Arc<Index>)>,
    imports: BTreeMap<String, Arc<imports::Imports>>,
    faults: Arc<faults::FaultInjector>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl PineconeServer {
    /// Starts the server on its own runtime (usable from synchronous tests).
    pub fn start(config: ServerConfig) -> std::io::Result<PineconeServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("pinecone-test-server")
            .enable_all()
            .build()?;
        let mut server = runtime.block_on(Self::bind(config))?;
        server.runtime = Some(runtime);
        Ok(server)
    }

    /// Starts the server on the current runtime.
    pub async fn bind(config: ServerConfig) -> std::io::Result<PineconeServer> {
        let faults = Arc::new(faults::FaultInjector::new(config.faults.clone()));
        let key = Arc::new(config.api_key.clone());
        let controller_listener = TcpListener::bind(config.bind).await?;
        let controller = controller_listener.local_addr()?;
        let mut indexes = BTreeMap::new();
        let mut all_imports = BTreeMap::new();
        for ic in &config.indexes {
            let listener = TcpListener::bind(SocketAddr::new(controller.ip(), 0)).await?;
            let addr = listener.local_addr()?;
            let index = Arc::new(Index::new(ic.clone(), format!("{addr}")));
            let imports = Arc::new(imports::Imports::new(config.import_storage.clone()));
            all_imports.insert(ic.name.clone(), Arc::clone(&imports));
            let router = data_plane::router(Arc::clone(&index), imports, Arc::clone(&key));
            tokio::spawn(faults::serve(listener, router, Some(Arc::clone(&faults))));
            indexes.insert(ic.name.clone(), (addr, index));
        }
        let catalog: Arc<BTreeMap<String, Arc<Index>>> = Arc::new(
            indexes
                .iter()
                .map(|(k, (_, i))| (k.clone(), Arc::clone(i)))
                .collect(),
        );
        let control = Router::new()
            .route("/indexes/{name}", get(describe_index))
            .with_state(ControlState { catalog, key });
        tokio::spawn(faults::serve(controller_listener, control, None));
        Ok(PineconeServer {
            controller,
            indexes,
            imports: all_imports,
            faults,
            runtime: None,
        })
    }

    /// The control plane's base URL (`http://127.0.0.1:PORT`).
    pub fn controller_url(&self) -> String {
        format!("http://{}", self.controller)
    }

    /// An index's data-plane base URL.
    pub fn index_url(&self, name: &str) -> Option<String> {
        self.indexes.get(name).map(|(a, _)| format!("http://{a}"))
    }

    /// A copy of the records in an index's namespace (`""` is the default namespace).
    pub fn records(&self, index: &str, namespace: &str) -> BTreeMap<String, Record> {
        self.indexes
            .get(index)
            .map(|(_, i)| i.snapshot(namespace))
            .unwrap_or_default()
    }

    /// How many upsert requests the index accepted (after fault injection).
    pub fn upsert_requests(&self, index: &str) -> u64 {
        self.indexes
            .get(index)
            .map(|(_, i)| i.upsert_requests())
            .unwrap_or(0)
    }

    /// How many vectors the index received in accepted upserts, counting an id each time it
    /// came (so a vector sent twice counts twice, where [`Self::records`] shows it once).
    pub fn vectors_upserted(&self, index: &str) -> u64 {
        self.indexes
            .get(index)
            .map(|(_, i)| i.vectors_upserted())
            .unwrap_or(0)
    }

    /// An index's bulk imports as `GET /bulk/imports/{id}` describes them, oldest first.
    pub fn imports(&self, index: &str) -> Vec<serde_json::Value> {
        self.imports
            .get(index)
            .and_then(|i| i.list()["data"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Faults injected so far.
    pub fn fault_counts(&self) -> FaultCounts {
        self.faults.counts()
    }
}

impl Drop for PineconeServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(100));
        }
    }
}

#[derive(Clone)]
struct ControlState {
    catalog: Arc<BTreeMap<String, Arc<Index>>>,
    key: Arc<String>,
}

/// Control-plane error body: `{"error": {"code", "message"}, "status"}`.
fn control_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "error": { "code": code, "message": message },
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

async fn describe_index(
    State(state): State<ControlState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !limits::key_matches(&headers, &state.key) {
        return control_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Invalid API Key",
        );
    }
    match state.catalog.get(&name) {
        None => control_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("Resource {name} not found"),
        ),
        Some(index) => axum::Json(index.description()).into_response(),
    }
}
