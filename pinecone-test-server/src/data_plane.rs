//! One index's data plane: upsert, query, fetch, list, update, delete, describe_index_stats.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::filter;
use crate::imports::{Imports, StartImport};
use crate::limits::{self, ApiError};
use crate::store::{Index, Metric, Record, SparseValues, score};

/// Bodies up to this size are read so that the 2 MB limit answers with Pinecone's own message.
const READ_LIMIT: usize = 64 * 1024 * 1024;

#[derive(Clone)]
struct Plane {
    index: Arc<Index>,
    imports: Arc<Imports>,
}

pub fn router(index: Arc<Index>, imports: Arc<Imports>, key: Arc<String>) -> Router {
    Router::new()
        .route("/vectors/upsert", post(upsert))
        .route("/query", post(query))
        .route("/vectors/fetch", get(fetch))
        .route("/vectors/list", get(list))
        .route("/vectors/update", post(update))
        .route("/vectors/delete", post(delete))
        .route("/describe_index_stats", post(stats).get(stats))
        .route("/bulk/imports", post(start_import).get(list_imports))
        .route(
            "/bulk/imports/{id}",
            get(describe_import).delete(cancel_import),
        )
        .fallback(|| async { ApiError::not_found("Not Found") })
        .with_state(Plane { index, imports })
        .layer(DefaultBodyLimit::max(READ_LIMIT))
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let key = Arc::clone(&key);
            async move {
                if limits::key_matches(req.headers(), &key) {
                    next.run(req).await
                } else {
                    limits::unauthorized()
                }
            }
        }))
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    if body.len() > limits::MAX_REQUEST_BYTES {
        return Err(ApiError::invalid(format!(
            "Request size {:.2}MB exceeds the maximum supported size of 2MB",
            body.len() as f64 / (1024.0 * 1024.0)
        )));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid(format!("Invalid request: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpsertRequest {
    vectors: Vec<UpsertVector>,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpsertVector {
    id: String,
    #[serde(default)]
    values: Vec<f32>,
    #[serde(default)]
    sparse_values: Option<SparseValues>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

async fn start_import(State(p): State<Plane>, body: Bytes) -> Result<Response, ApiError> {
    let req: StartImport = parse(&body)?;
    let started = p.imports.start(Arc::clone(&p.index), req)?;
    Ok(axum::Json(started).into_response())
}

async fn list_imports(State(p): State<Plane>) -> Response {
    axum::Json(p.imports.list()).into_response()
}

async fn describe_import(
    State(p): State<Plane>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(p.imports.describe(&id)?).into_response())
}

async fn cancel_import(
    State(p): State<Plane>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    Ok(axum::Json(p.imports.cancel(&id)?).into_response())
}

async fn upsert(State(p): State<Plane>, body: Bytes) -> Result<Response, ApiError> {
    let req: UpsertRequest = parse(&body)?;
    let ns = limits::namespace_name(req.namespace.as_deref()).to_string();
    limits::check_namespace(&ns)?;
    if req.vectors.is_empty() {
        return Err(ApiError::invalid(
            "Invalid request: vectors must not be empty",
        ));
    }
    if req.vectors.len() > limits::MAX_UPSERT_VECTORS {
        return Err(ApiError::invalid(format!(
            "Invalid request: upsert takes at most {} vectors, got {}",
            limits::MAX_UPSERT_VECTORS,
            req.vectors.len()
        )));
    }
    let mut records = Vec::with_capacity(req.vectors.len());
    for v in req.vectors {
        limits::check_id(&v.id)?;
        if let Some(sparse) = &v.sparse_values {
            limits::check_sparse(&v.id, sparse, p.index.config.metric)?;
        }
        limits::check_values(&v.id, &v.values, p.index.config.dimension)?;
        if let Some(md) = &v.metadata {
            limits::check_metadata(&v.id, md)?;
        }
        records.push((
            v.id,
            Record {
                values: v.values,
                metadata: v.metadata,
                sparse: v.sparse_values,
            },
        ));
    }
    let n = p.index.upsert(&ns, records);
    Ok(axum::Json(json!({ "upsertedCount": n })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct QueryRequest {
    top_k: usize,
    #[serde(default)]
    vector: Option<Vec<f32>>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    include_values: bool,
    #[serde(default)]
    include_metadata: bool,
    #[serde(default)]
    sparse_vector: Option<SparseValues>,
}

async fn query(State(p): State<Plane>, body: Bytes) -> Result<Response, ApiError> {
    let req: QueryRequest = parse(&body)?;
    if req.top_k == 0 || req.top_k > limits::MAX_TOP_K {
        return Err(ApiError::invalid(format!(
            "topK must be between 1 and {}",
            limits::MAX_TOP_K
        )));
    }
    if let Some(sparse) = &req.sparse_vector {
        limits::check_sparse("sparseVector", sparse, p.index.config.metric)?;
    }
    let ns = limits::namespace_name(req.namespace.as_deref()).to_string();
    let dim = p.index.config.dimension;
    let metric = p.index.config.metric;
    let matches = p.index.with_namespace(&ns, |records| {
        let empty = Default::default();
        let records = records.unwrap_or(&empty);
        let query = match (&req.vector, &req.id) {
            (Some(v), None) => {
                if v.len() != dim {
                    return Err(ApiError::invalid(format!(
                        "Query vector dimension {} does not match the dimension of the index {dim}",
                        v.len()
                    )));
                }
                v.clone()
            }
            (None, Some(id)) => match records.get(id) {
                Some(r) => r.values.clone(),
                None => return Ok(Vec::new()),
            },
            _ => {
                return Err(ApiError::invalid(
                    "exactly one of vector and id must be given",
                ));
            }
        };
        let mut scored = Vec::new();
        for (id, r) in records {
            if let Some(f) = &req.filter
                && !filter::matches(f, r.metadata.as_ref())?
            {
                continue;
            }
            // A hybrid query: the dense and the sparse dot products, added.
            let sparse = match (&req.sparse_vector, &r.sparse) {
                (Some(q), Some(s)) => q.dot(s),
                _ => 0.0,
            };
            scored.push((score(metric, &query, &r.values) + sparse, id, r));
        }
        let better_low = metric == Metric::Euclidean;
        scored.sort_by(|a, b| {
            let o = a.0.total_cmp(&b.0);
            if better_low { o } else { o.reverse() }
        });
        scored.truncate(req.top_k);
        Ok(scored
            .into_iter()
            .map(|(s, id, r)| {
                let mut m = json!({ "id": id, "score": s, "values": [] });
                if req.include_values {
                    m["values"] = json!(r.values);
                    if let Some(sv) = &r.sparse {
                        m["sparseValues"] = json!(sv);
                    }
                }
                if req.include_metadata
                    && let Some(md) = &r.metadata
                {
                    m["metadata"] = Value::Object(md.clone());
                }
                m
            })
            .collect::<Vec<_>>())
    })?;
    Ok(axum::Json(json!({
        "matches": matches,
        "namespace": ns,
        "usage": { "readUnits": 1 },
    }))
    .into_response())
}

/// Query-string pairs (repeated keys kept, as `ids=a&ids=b`).
fn pairs(raw: &Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn first<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

async fn fetch(State(p): State<Plane>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q = pairs(&raw);
    let ids: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.as_str())
        .collect();
    if ids.is_empty() {
        return Err(ApiError::invalid("Invalid request: ids is required"));
    }
    if ids.len() > limits::MAX_IDS {
        return Err(ApiError::invalid(format!(
            "Invalid request: at most {} ids per fetch",
            limits::MAX_IDS
        )));
    }
    let ns = limits::namespace_name(first(&q, "namespace")).to_string();
    let vectors = p.index.with_namespace(&ns, |records| {
        let mut out = Map::new();
        for id in ids {
            if let Some(r) = records.and_then(|rs| rs.get(id)) {
                let mut v = json!({ "id": id, "values": r.values });
                if let Some(md) = &r.metadata {
                    v["metadata"] = Value::Object(md.clone());
                }
                out.insert(id.to_string(), v);
            }
        }
        out
    });
    Ok(axum::Json(json!({
        "vectors": vectors,
        "namespace": ns,
        "usage": { "readUnits": 1 },
    }))
    .into_response())
}

async fn list(State(p): State<Plane>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let q = pairs(&raw);
    let limit = match first(&q, "limit") {
        None => limits::MAX_LIST_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=limits::MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "limit must be between 1 and {}",
                    limits::MAX_LIST_LIMIT
                ))
            })?,
    };
    let prefix = first(&q, "prefix").unwrap_or("");
    let after = first(&q, "paginationToken");
    let ns = limits::namespace_name(first(&q, "namespace")).to_string();
    let (ids, more) = p.index.with_namespace(&ns, |records| {
        let Some(records) = records else {
            return (Vec::new(), false);
        };
        let mut it = records
            .keys()
            .filter(|id| id.starts_with(prefix))
            .filter(|id| after.is_none_or(|a| id.as_str() > a));
        let ids: Vec<String> = it.by_ref().take(limit).cloned().collect();
        (ids, it.next().is_some())
    });
    let mut body = json!({
        "vectors": ids.iter().map(|id| json!({ "id": id })).collect::<Vec<_>>(),
        "namespace": ns,
        "usage": { "readUnits": 1 },
    });
    if more && let Some(last) = ids.last() {
        body["pagination"] = json!({ "next": last });
    }
    Ok(axum::Json(body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UpdateRequest {
    id: String,
    #[serde(default)]
    values: Option<Vec<f32>>,
    #[serde(default)]
    set_metadata: Option<Map<String, Value>>,
    #[serde(default)]
    namespace: Option<String>,
}

async fn update(State(p): State<Plane>, body: Bytes) -> Result<Response, ApiError> {
    let req: UpdateRequest = parse(&body)?;
    let ns = limits::namespace_name(req.namespace.as_deref()).to_string();
    let dim = p.index.config.dimension;
    p.index.with_namespace_mut(&ns, |records| {
        let Some(r) = records.get_mut(&req.id) else {
            return Err(ApiError::not_found(format!("Vector {} not found", req.id)));
        };
        if let Some(v) = req.values {
            limits::check_values(&req.id, &v, dim)?;
            r.values = v;
        }
        if let Some(set) = req.set_metadata {
            let md = r.metadata.get_or_insert_with(Map::new);
            md.extend(set);
            limits::check_metadata(&req.id, md)?;
        }
        Ok(())
    })?;
    Ok(axum::Json(json!({})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeleteRequest {
    #[serde(default)]
    ids: Option<Vec<String>>,
    #[serde(default)]
    delete_all: bool,
    #[serde(default)]
    filter: Option<Value>,
    #[serde(default)]
    namespace: Option<String>,
}

async fn delete(State(p): State<Plane>, body: Bytes) -> Result<Response, ApiError> {
    let req: DeleteRequest = parse(&body)?;
    let ns = limits::namespace_name(req.namespace.as_deref()).to_string();
    let given = usize::from(req.ids.is_some()) + usize::from(req.delete_all);
    if given + usize::from(req.filter.is_some()) != 1 {
        return Err(ApiError::invalid(
            "exactly one of ids, deleteAll and filter must be given",
        ));
    }
    if req
        .ids
        .as_ref()
        .is_some_and(|ids| ids.len() > limits::MAX_IDS)
    {
        return Err(ApiError::invalid(format!(
            "at most {} ids per delete",
            limits::MAX_IDS
        )));
    }
    p.index.with_namespace_mut(&ns, |records| {
        if req.delete_all {
            records.clear();
        } else if let Some(ids) = &req.ids {
            for id in ids {
                records.remove(id);
            }
        } else if let Some(f) = &req.filter {
            let mut doomed = Vec::new();
            for (id, r) in records.iter() {
                if filter::matches(f, r.metadata.as_ref())? {
                    doomed.push(id.clone());
                }
            }
            for id in doomed {
                records.remove(&id);
            }
        }
        Ok::<(), ApiError>(())
    })?;
    Ok(axum::Json(json!({})).into_response())
}

async fn stats(State(p): State<Plane>) -> Response {
    let (namespaces, total) = p.index.namespace_counts();
    (
        StatusCode::OK,
        axum::Json(json!({
            "namespaces": namespaces,
            "dimension": p.index.config.dimension,
            "indexFullness": 0.0,
            "totalVectorCount": total,
            "metric": p.index.config.metric,
            "vectorType": "dense",
        })),
    )
        .into_response()
}
