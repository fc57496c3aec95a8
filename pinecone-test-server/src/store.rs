//! In-memory indexes: namespaces of records keyed by id.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::IndexConfig;

/// The index's similarity metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    Cosine,
    Euclidean,
    Dotproduct,
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "euclidean" => Ok(Metric::Euclidean),
            "dotproduct" => Ok(Metric::Dotproduct),
            other => Err(format!(
                "unknown metric `{other}` (cosine, euclidean, dotproduct)"
            )),
        }
    }
}

/// One stored vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub values: Vec<f32>,
    pub metadata: Option<Map<String, Value>>,
    /// `sparseValues` (hybrid search; dot-product indexes only).
    pub sparse: Option<SparseValues>,
}

/// Pinecone's `sparseValues` / `sparseVector`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseValues {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseValues {
    /// The dot product with `other`.
    pub fn dot(&self, other: &SparseValues) -> f32 {
        let theirs: std::collections::HashMap<u32, f32> = other
            .indices
            .iter()
            .copied()
            .zip(other.values.iter().copied())
            .collect();
        self.indices
            .iter()
            .zip(&self.values)
            .map(|(i, v)| v * theirs.get(i).copied().unwrap_or(0.0))
            .sum()
    }
}

pub struct Index {
    pub config: IndexConfig,
    host: String,
    namespaces: Mutex<BTreeMap<String, BTreeMap<String, Record>>>,
    upserts: AtomicU64,
    /// Vectors received in accepted upserts, duplicates included.
    vectors_upserted: AtomicU64,
}

impl Index {
    pub fn new(config: IndexConfig, host: String) -> Index {
        Index {
            config,
            host,
            namespaces: Mutex::new(BTreeMap::new()),
            upserts: AtomicU64::new(0),
            vectors_upserted: AtomicU64::new(0),
        }
    }

    /// The control plane's `describe_index` body (API 2025-10 shape).
    pub fn description(&self) -> Value {
        json!({
            "name": self.config.name,
            "dimension": self.config.dimension,
            "metric": self.config.metric,
            "host": self.host,
            "vector_type": "dense",
            "deletion_protection": "disabled",
            "spec": { "serverless": { "cloud": "aws", "region": "us-east-1" } },
            "status": { "ready": true, "state": "Ready" },
            "tags": null,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, BTreeMap<String, Record>>> {
        self.namespaces.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn upsert(&self, namespace: &str, records: Vec<(String, Record)>) -> usize {
        self.upserts.fetch_add(1, Ordering::Relaxed);
        let n = records.len();
        self.vectors_upserted.fetch_add(n as u64, Ordering::Relaxed);
        let mut all = self.lock();
        let ns = all.entry(namespace.to_string()).or_default();
        for (id, r) in records {
            ns.insert(id, r);
        }
        n
    }

    pub fn upsert_requests(&self) -> u64 {
        self.upserts.load(Ordering::Relaxed)
    }

    pub fn vectors_upserted(&self) -> u64 {
        self.vectors_upserted.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self, namespace: &str) -> BTreeMap<String, Record> {
        self.lock().get(namespace).cloned().unwrap_or_default()
    }

    /// Runs `f` over a namespace's records (empty when the namespace does not exist).
    pub fn with_namespace<T>(
        &self,
        namespace: &str,
        f: impl FnOnce(Option<&BTreeMap<String, Record>>) -> T,
    ) -> T {
        f(self.lock().get(namespace))
    }

    pub fn with_namespace_mut<T>(
        &self,
        namespace: &str,
        f: impl FnOnce(&mut BTreeMap<String, Record>) -> T,
    ) -> T {
        let mut all = self.lock();
        let ns = all.entry(namespace.to_string()).or_default();
        let out = f(ns);
        if ns.is_empty() {
            all.remove(namespace);
        }
        out
    }

    /// `{"ns": {"vectorCount": n}}` for every non-empty namespace.
    pub fn namespace_counts(&self) -> (Map<String, Value>, usize) {
        let all = self.lock();
        let mut out = Map::new();
        let mut total = 0;
        for (name, ns) in all.iter() {
            total += ns.len();
            out.insert(name.clone(), json!({ "vectorCount": ns.len() }));
        }
        (out, total)
    }
}

/// Score of `b` against the query `a` under `metric`; higher is better for cosine and dot
/// product, lower for euclidean (Pinecone returns the squared distance).
pub fn score(metric: Metric, a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    match metric {
        Metric::Dotproduct => dot,
        Metric::Cosine => {
            let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (na * nb).max(f32::MIN_POSITIVE)
        }
        Metric::Euclidean => a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum(),
    }
}
