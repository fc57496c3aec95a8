//! Pinecone's REST API: finding the index, checking it, and the calls the writer and `query` make.
//!
//! Every request carries `Api-Key` (marked sensitive, so no HTTP-level log shows it) and pins
//! `X-Pinecone-Api-Version`. Errors are classified once here: what may be retried, what is
//! backpressure, what is a request too large to send whole, and what is final.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use backon::Retryable;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::PineconeSinkSpec;
use crate::error::config_error;
use crate::secret::Secret;

/// The API version whose shapes this client speaks (describe_index has top-level `dimension`).
pub const API_VERSION: &str = "2025-10";
const DEFAULT_CONTROLLER: &str = "https://api.pinecone.io";

/// The control-plane URL: the pipeline's, then `$PINECONE_CONTROLLER_HOST`, then Pinecone's.
pub fn controller_url(spec: &PineconeSinkSpec) -> String {
    spec.controller
        .clone()
        .or_else(|| std::env::var("PINECONE_CONTROLLER_HOST").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_CONTROLLER.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The API key: the pipeline's, then `$PINECONE_API_KEY`, then `api_key_file`.
pub fn api_key(spec: &PineconeSinkSpec) -> Result<Secret> {
    if let Some(k) = &spec.api_key
        && !k.expose().trim().is_empty()
    {
        return Ok(k.clone());
    }
    if let Ok(k) = std::env::var("PINECONE_API_KEY")
        && !k.trim().is_empty()
    {
        return Ok(Secret::new(k));
    }
    if let Some(path) = &spec.api_key_file {
        let k = std::fs::read_to_string(path).map_err(|e| {
            config_error(format!(
                "sink.pinecone.api_key_file {}: {e}",
                path.display()
            ))
        })?;
        return Ok(Secret::new(k.trim().to_string()));
    }
    Err(config_error(
        "no Pinecone API key: set PINECONE_API_KEY, or sink.pinecone.api_key (e.g. ${PINECONE_API_KEY}) or api_key_file",
    ))
}

/// Adds a scheme to a host the control plane returned: http when the controller itself is
/// plain http (a local server), https otherwise.
pub fn data_plane_url(host: &str, controller: &str) -> String {
    let host = host.trim_end_matches('/');
    if host.starts_with("http://") || host.starts_with("https://") {
        host.to_string()
    } else if controller.starts_with("http://") {
        format!("http://{host}")
    } else {
        format!("https://{host}")
    }
}

/// What the control plane says about an index (`GET /indexes/{name}`).
#[derive(Debug, Clone, Deserialize)]
pub struct IndexDescription {
    #[serde(default)]
    pub dimension: Option<usize>,
    #[serde(default)]
    pub metric: Option<String>,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub status: IndexStatus,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IndexStatus {
    #[serde(default = "ready_by_default")]
    pub ready: bool,
    #[serde(default = "unknown_state")]
    pub state: String,
}

impl Default for IndexStatus {
    fn default() -> Self {
        IndexStatus {
            ready: ready_by_default(),
            state: unknown_state(),
        }
    }
}

fn ready_by_default() -> bool {
    true
}

fn unknown_state() -> String {
    "unknown".into()
}

/// `POST /describe_index_stats`.
#[derive(Debug, Clone, Deserialize)]
pub struct IndexStats {
    #[serde(default)]
    pub dimension: Option<usize>,
    #[serde(default)]
    pub namespaces: std::collections::BTreeMap<String, NamespaceStats>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStats {
    #[serde(default)]
    pub vector_count: u64,
}

/// `POST /vectors/upsert`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpsertResponse {
    #[serde(default)]
    pub upserted_count: u64,
}

/// `POST /query`.
#[derive(Debug, Clone, Deserialize)]
pub struct QueryResponse {
    #[serde(default)]
    pub matches: Vec<QueryMatch>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct QueryMatch {
    pub id: String,
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

/// An error body: `{"message"}` on the data plane, `{"error": {"message"}}` on the control
/// plane.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error: Option<ErrorDetail>,
}

#[derive(Debug, Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
}

/// A failed call, classified for the writer.
#[derive(Debug)]
pub enum CallError {
    /// 429 or 503: the server asks for less load (with its `Retry-After`, if any).
    Backpressure {
        status: StatusCode,
        message: String,
        retry_after: Option<Duration>,
    },
    /// Other 5xx, 408, timeouts, dropped connections: worth another try.
    Transient(String),
    /// The request is over the server's size limit: split it, never resend it whole.
    TooLarge(String),
    /// Anything else (400, 401, 403, 404...): retrying cannot help.
    Final { status: StatusCode, message: String },
}

impl CallError {
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            CallError::Backpressure { .. } | CallError::Transient(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Backpressure { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The backoff's next delay, but never sooner than the server's `Retry-After` (for
    /// backon's `adjust`).
    pub fn honour_retry_after(&self, next: Option<Duration>) -> Option<Duration> {
        next.map(|d| self.retry_after().map_or(d, |r| r.max(d)))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Backpressure {
                status, message, ..
            } => write!(f, "{status}: {message}"),
            CallError::Transient(m) => f.write_str(m),
            CallError::TooLarge(m) => write!(f, "request too large: {m}"),
            CallError::Final { status, message } => write!(f, "{status}: {message}"),
        }
    }
}

/// Pinecone's message from an error body: `{"message"}` on the data plane,
/// `{"error": {"message"}}` on the control plane, or the raw text (some 401s are plain text).
pub fn error_message(body: &str) -> String {
    let msg = serde_json::from_str::<ErrorBody>(body)
        .ok()
        .and_then(|b| b.message.or(b.error.and_then(|e| e.message)));
    let msg = msg.unwrap_or_else(|| body.trim().to_string());
    let msg: String = msg.chars().take(500).collect();
    if msg.is_empty() {
        "(empty body)".to_string()
    } else {
        msg
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("retry-after")?.to_str().ok()?.trim();
    v.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(300.0)))
}

/// Classifies a non-success response.
pub fn classify(status: StatusCode, headers: &HeaderMap, body: &str) -> CallError {
    let message = error_message(body);
    // Pinecone signals an oversized request with a plain 400 whose message names the maximum
    // size (pinecone-api.md: no code sets it apart from other 400s), or a proxy's bare 413.
    let too_large = status == StatusCode::PAYLOAD_TOO_LARGE
        || (status == StatusCode::BAD_REQUEST
            && message
                .to_ascii_lowercase()
                .contains("maximum supported size"));
    if too_large {
        CallError::TooLarge(message)
    } else if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        CallError::Backpressure {
            status,
            message,
            retry_after: retry_after(headers),
        }
    } else if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        CallError::Transient(format!("{status}: {message}"))
    } else {
        CallError::Final { status, message }
    }
}

/// Classifies a transport error (no response, or a response cut short).
pub fn classify_transport(e: &reqwest::Error) -> CallError {
    if e.is_timeout() {
        CallError::Backpressure {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: "request timed out".into(),
            retry_after: None,
        }
    } else {
        // Connect errors, connections dropped before or during the response.
        CallError::Transient(format!("connection error: {}", describe_transport(e)))
    }
}

/// A transport error's chain in one line (reqwest's own Display is terse).
fn describe_transport(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    parts.dedup();
    parts.join(": ")
}

/// Retries for calls outside the writer: a few, quickly.
fn preflight_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(5)
}

/// An HTTP client bound to one key and one data-plane host.
#[derive(Clone)]
pub struct PineconeClient {
    http: reqwest::Client,
    data_plane: String,
}

impl PineconeClient {
    /// A client for `data_plane` (a base URL with scheme).
    pub fn new(key: &Secret, data_plane: String, timeout: Duration) -> Result<PineconeClient> {
        Ok(PineconeClient {
            http: http_client(key, timeout)?,
            data_plane: data_plane.trim_end_matches('/').to_string(),
        })
    }

    pub fn data_plane(&self) -> &str {
        &self.data_plane
    }

    /// [`Self::post`] with retries of what may be retried, for calls outside the writer
    /// (preflight, query).
    pub async fn post_retrying<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
    ) -> std::result::Result<T, CallError> {
        (|| self.post(path, body.clone()))
            .retry(preflight_backoff())
            .when(CallError::retryable)
            .adjust(CallError::honour_retry_after)
            .notify(|e: &CallError, d: Duration| {
                tracing::debug!("{path} failed ({e}); retrying in {:.2} s", d.as_secs_f64())
            })
            .await
    }

    /// POSTs a JSON body to a data-plane path and returns the parsed answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Bytes,
    ) -> std::result::Result<T, CallError> {
        let url = format!("{}{path}", self.data_plane);
        let request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        Self::answer(request).await
    }

    /// GETs a data-plane path, with retries of what may be retried.
    pub async fn get_retrying<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> std::result::Result<T, CallError> {
        let url = format!("{}{path}", self.data_plane);
        (|| Self::answer(self.http.get(&url)))
            .retry(preflight_backoff())
            .when(CallError::retryable)
            .adjust(CallError::honour_retry_after)
            .await
    }

    /// DELETEs a data-plane path.
    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> std::result::Result<T, CallError> {
        let url = format!("{}{path}", self.data_plane);
        Self::answer(self.http.delete(&url)).await
    }

    /// Sends a request and parses its JSON answer, classifying failures.
    async fn answer<T: DeserializeOwned>(
        request: reqwest::RequestBuilder,
    ) -> std::result::Result<T, CallError> {
        let resp = request.send().await.map_err(|e| classify_transport(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        // A connection dropped mid-body is a transport error, as retryable as one before it.
        let text = resp.text().await.map_err(|e| classify_transport(&e))?;
        if !status.is_success() {
            return Err(classify(status, &headers, &text));
        }
        serde_json::from_str(&text).map_err(|e| {
            CallError::Transient(format!(
                "{status} with a body that is not the expected JSON ({e})"
            ))
        })
    }
}

fn http_client(key: &Secret, timeout: Duration) -> Result<reqwest::Client> {
    let mut headers = HeaderMap::new();
    let mut k = HeaderValue::from_str(key.expose()).map_err(|_| {
        config_error("the Pinecone API key holds characters not allowed in a header")
    })?;
    k.set_sensitive(true);
    headers.insert("api-key", k);
    headers.insert(
        "x-pinecone-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("embedflow/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .build()
        .context("cannot build the HTTP client")
}

/// `GET /indexes/{name}` on the control plane.
pub async fn describe_index(
    key: &Secret,
    controller: &str,
    index: &str,
    timeout: Duration,
) -> Result<IndexDescription> {
    let http = http_client(key, timeout)?;
    let url = format!("{controller}/indexes/{index}");
    let get = || async {
        let resp = http
            .get(&url)
            .send()
            .await
            .map_err(|e| classify_transport(&e))?;
        if resp.status().is_server_error() || resp.status() == StatusCode::TOO_MANY_REQUESTS {
            let (status, headers) = (resp.status(), resp.headers().clone());
            return Err(classify(
                status,
                &headers,
                &resp.text().await.unwrap_or_default(),
            ));
        }
        Ok(resp)
    };
    let resp = get
        .retry(preflight_backoff())
        .when(CallError::retryable)
        .adjust(CallError::honour_retry_after)
        .await;
    let resp = resp.map_err(|e| {
        anyhow!(
            "cannot reach the Pinecone control plane at {controller}: {e} (set sink.pinecone.controller, PINECONE_CONTROLLER_HOST, or sink.pinecone.host to skip it)"
        )
    })?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    match status {
        s if s.is_success() => {}
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            return Err(config_error(format!(
                "Pinecone rejected the API key ({status} from {url}: {}); check PINECONE_API_KEY or sink.pinecone.api_key",
                error_message(&body)
            )));
        }
        StatusCode::NOT_FOUND => {
            return Err(config_error(format!(
                "Pinecone index `{index}` does not exist ({url} answered 404: {}); create it or fix sink.pinecone.index",
                error_message(&body)
            )));
        }
        _ => bail!(
            "the Pinecone control plane answered {status} for {url}: {}",
            error_message(&body)
        ),
    }
    let d: IndexDescription = serde_json::from_str(&body)
        .with_context(|| format!("{url} answered with a body that is not an index description"))?;
    if d.host.is_empty() {
        bail!("{url}: the answer names no host for index `{index}`");
    }
    Ok(d)
}

/// `POST /describe_index_stats` on the data plane: proves the key works there and gives the
/// index's dimension when the control plane was skipped.
pub async fn index_stats(client: &PineconeClient) -> Result<IndexStats> {
    let url = format!("{}/describe_index_stats", client.data_plane());
    client
        .post_retrying("/describe_index_stats", Bytes::from_static(b"{}"))
        .await
        .map_err(|e| match e {
            CallError::Final {
                status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
                message,
            } => config_error(format!(
                "Pinecone rejected the API key ({url}: {message}); check PINECONE_API_KEY or sink.pinecone.api_key"
            )),
            CallError::Final {
                status: StatusCode::NOT_FOUND,
                message,
            } => anyhow!("{url} answered 404 ({message}): is sink.pinecone.host the index's host?"),
            other => anyhow!("cannot read the index's stats at {url}: {other}"),
        })
}
