//! Pinecone's documented limits and data-plane error bodies.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// Largest request body Pinecone accepts (2 MB).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// Vectors per upsert.
pub const MAX_UPSERT_VECTORS: usize = 1000;
/// Serialized metadata per vector.
pub const MAX_METADATA_BYTES: usize = 40 * 1024;
/// Id length.
pub const MAX_ID_LEN: usize = 512;
/// Ids per fetch or delete.
pub const MAX_IDS: usize = 1000;
/// Namespace name length.
pub const MAX_NAMESPACE_LEN: usize = 512;
/// Results per query.
pub const MAX_TOP_K: usize = 10_000;
/// Non-zero values in one sparse vector.
pub const MAX_SPARSE_VALUES: usize = 2048;
/// Ids per list page.
pub const MAX_LIST_LIMIT: usize = 100;

/// gRPC status numbers used in data-plane error bodies.
pub mod code {
    pub const INVALID_ARGUMENT: u16 = 3;
    pub const NOT_FOUND: u16 = 5;
    pub const RESOURCE_EXHAUSTED: u16 = 8;
    pub const INTERNAL: u16 = 13;
    pub const UNAVAILABLE: u16 = 14;
}

/// A data-plane error: `{"code", "message", "details": []}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u16,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: code::INVALID_ARGUMENT,
            message: message.into(),
        }
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: code::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({ "code": self.code, "message": self.message, "details": [] })),
        )
            .into_response()
    }
}

/// Whether the request carries the server's key.
pub fn key_matches(headers: &HeaderMap, key: &str) -> bool {
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == key)
}

/// A bad key on the data plane: Pinecone has answered this in plain text, not JSON.
pub fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "Invalid API Key").into_response()
}

pub fn check_namespace(ns: &str) -> Result<(), ApiError> {
    if ns.len() > MAX_NAMESPACE_LEN || !ns.is_ascii() {
        return Err(ApiError::invalid(format!(
            "Namespace name must be at most {MAX_NAMESPACE_LEN} ASCII characters"
        )));
    }
    Ok(())
}

/// `__default__` is an alias of the default namespace.
pub fn namespace_name(ns: Option<&str>) -> &str {
    match ns {
        None | Some("__default__") => "",
        Some(n) => n,
    }
}

pub fn check_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(ApiError::invalid(format!(
            "Vector ID must be 1 to {MAX_ID_LEN} characters, got {} for id `{}`",
            id.len(),
            id.chars().take(64).collect::<String>()
        )));
    }
    if !id.is_ascii() {
        return Err(ApiError::invalid(format!(
            "Vector ID must be ASCII, got `{id}`"
        )));
    }
    Ok(())
}

pub fn check_values(id: &str, values: &[f32], dimension: usize) -> Result<(), ApiError> {
    if values.len() != dimension {
        return Err(ApiError::invalid(format!(
            "Vector dimension {} does not match the dimension of the index {dimension}",
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid(format!(
            "Vector {id} contains a value that is not finite"
        )));
    }
    if values.iter().all(|v| *v == 0.0) {
        return Err(ApiError::invalid(format!(
            "Dense vectors must contain at least one non-zero value. Vector ID {id} contains only zeros."
        )));
    }
    Ok(())
}

pub fn check_metadata(id: &str, metadata: &Map<String, Value>) -> Result<(), ApiError> {
    let size = serde_json::to_vec(metadata).map(|v| v.len()).unwrap_or(0);
    if size > MAX_METADATA_BYTES {
        return Err(ApiError::invalid(format!(
            "Metadata size is {size} bytes, which exceeds the limit of {MAX_METADATA_BYTES} bytes per vector (id `{id}`)"
        )));
    }
    for (key, value) in metadata {
        if key.starts_with('$') {
            return Err(ApiError::invalid(format!(
                "Metadata key `{key}` must not start with `$` (id `{id}`)"
            )));
        }
        let ok = match value {
            Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
            Value::Array(items) => items.iter().all(Value::is_string),
            Value::Null | Value::Object(_) => false,
        };
        if !ok {
            return Err(ApiError::invalid(format!(
                "Metadata value for field `{key}` must be a string, number, boolean or list of strings, got {value} (id `{id}`)"
            )));
        }
    }
    Ok(())
}

/// Checks a record's (or a query's) sparse values as Pinecone does: a dot-product index, as
/// many values as indices, at least one and at most [`MAX_SPARSE_VALUES`], indices unique,
/// values finite.
pub fn check_sparse(
    what: &str,
    sparse: &crate::store::SparseValues,
    metric: crate::store::Metric,
) -> Result<(), ApiError> {
    if metric != crate::store::Metric::Dotproduct {
        return Err(ApiError::invalid(
            "Index configuration does not support sparse values - only indexes that are dotproduct are supported",
        ));
    }
    if sparse.indices.len() != sparse.values.len() {
        return Err(ApiError::invalid(format!(
            "{what}: sparse values have {} indices and {} values",
            sparse.indices.len(),
            sparse.values.len()
        )));
    }
    if sparse.indices.is_empty() {
        return Err(ApiError::invalid(format!(
            "{what}: sparse vector must contain at least one value"
        )));
    }
    if sparse.indices.len() > MAX_SPARSE_VALUES {
        return Err(ApiError::invalid(format!(
            "{what}: sparse vector has {} non-zero values, more than the {MAX_SPARSE_VALUES} allowed",
            sparse.indices.len()
        )));
    }
    let unique: std::collections::HashSet<u32> = sparse.indices.iter().copied().collect();
    if unique.len() != sparse.indices.len() {
        return Err(ApiError::invalid(format!(
            "{what}: sparse vector indices must be unique"
        )));
    }
    if sparse.values.iter().any(|v| !v.is_finite()) {
        return Err(ApiError::invalid(format!(
            "{what}: sparse vector values must be finite"
        )));
    }
    Ok(())
}
