//! Upsert requests bounded by count and by serialized size.
//!
//! Records arrive already serialized, so a request's exact size is known before it is sent:
//! `{"vectors":[r1,r2,...],"namespace":"ns"}`.

use bytes::Bytes;

use super::records::EncodedRecord;

/// One upsert request: its records (kept for retries, splitting and the dead-letter file).
#[derive(Debug, Clone)]
pub struct UpsertBatch {
    pub records: Vec<EncodedRecord>,
    namespace_suffix: std::sync::Arc<Vec<u8>>,
}

impl UpsertBatch {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The request body.
    pub fn body(&self) -> Bytes {
        let size = envelope_size(&self.namespace_suffix)
            + self.records.iter().map(|r| r.json.len() + 1).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(PREFIX);
        for (i, r) in self.records.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&r.json);
        }
        out.push(b']');
        out.extend_from_slice(&self.namespace_suffix);
        out.push(b'}');
        Bytes::from(out)
    }

    /// Two halves, for a request the server found too large.
    pub fn split(mut self) -> (UpsertBatch, UpsertBatch) {
        let back = self.records.split_off(self.records.len() / 2);
        let other = UpsertBatch {
            records: back,
            namespace_suffix: self.namespace_suffix.clone(),
        };
        (self, other)
    }

    /// Up to `n` ids, for messages.
    pub fn sample_ids(&self, n: usize) -> String {
        let mut s: Vec<&str> = self.records.iter().take(n).map(|r| r.id.as_str()).collect();
        if self.records.len() > n {
            s.push("...");
        }
        format!("{} ids: {}", self.records.len(), s.join(", "))
    }
}

const PREFIX: &[u8] = b"{\"vectors\":[";

fn envelope_size(suffix: &[u8]) -> usize {
    PREFIX.len() + 1 + suffix.len() + 1
}

/// Accumulates records into requests of at most `max_records` and `max_bytes`.
pub struct Batcher {
    max_records: usize,
    max_bytes: usize,
    namespace_suffix: std::sync::Arc<Vec<u8>>,
    pending: Vec<EncodedRecord>,
    pending_bytes: usize,
}

impl Batcher {
    pub fn new(max_records: usize, max_bytes: usize, namespace: Option<&str>) -> Batcher {
        let suffix = match namespace {
            Some(ns) if !ns.is_empty() => {
                let quoted = serde_json::to_string(ns).unwrap_or_else(|_| "\"\"".into());
                format!(",\"namespace\":{quoted}").into_bytes()
            }
            _ => Vec::new(),
        };
        let namespace_suffix = std::sync::Arc::new(suffix);
        Batcher {
            max_records,
            max_bytes,
            pending_bytes: envelope_size(&namespace_suffix),
            namespace_suffix,
            pending: Vec::new(),
        }
    }

    /// Adds a record; returns a full request when this record would not fit in the current one.
    pub fn push(&mut self, record: EncodedRecord) -> Option<UpsertBatch> {
        let size = record.json.len() + usize::from(!self.pending.is_empty());
        let full = !self.pending.is_empty()
            && (self.pending.len() >= self.max_records
                || self.pending_bytes + size > self.max_bytes);
        let out = if full { self.take() } else { None };
        self.pending_bytes += record.json.len() + usize::from(!self.pending.is_empty());
        self.pending.push(record);
        out
    }

    /// The request being filled, if any.
    pub fn take(&mut self) -> Option<UpsertBatch> {
        if self.pending.is_empty() {
            return None;
        }
        self.pending_bytes = envelope_size(&self.namespace_suffix);
        Some(UpsertBatch {
            records: std::mem::take(&mut self.pending),
            namespace_suffix: self.namespace_suffix.clone(),
        })
    }
}
