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

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, pad: usize) -> EncodedRecord {
        let json = format!(
            r#"{{"id":"{id}","values":[1.0],"metadata":{{"t":"{}"}}}}"#,
            "x".repeat(pad)
        );
        EncodedRecord {
            id: id.into(),
            json: json.into_bytes(),
        }
    }

    #[test]
    fn bounds_count_and_bytes_and_bodies_are_valid_json() {
        let mut b = Batcher::new(3, 1000, Some("prod"));
        let mut batches = Vec::new();
        for i in 0..10 {
            if let Some(x) = b.push(rec(&format!("r{i}"), 300)) {
                batches.push(x);
            }
        }
        batches.extend(b.take());
        let total: usize = batches.iter().map(|x| x.len()).sum();
        assert_eq!(total, 10);
        for x in &batches {
            let body = x.body();
            assert!(body.len() <= 1000, "{} bytes", body.len());
            assert!(x.len() <= 3);
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["namespace"], "prod");
            assert_eq!(v["vectors"].as_array().unwrap().len(), x.len());
        }
        // 300-byte records: three do not fit in 1000 bytes, so bytes bound these requests.
        assert!(batches.iter().all(|x| x.len() == 2));
    }

    #[test]
    fn split_keeps_every_record() {
        let mut b = Batcher::new(10, 100_000, None);
        for i in 0..5 {
            assert!(b.push(rec(&format!("r{i}"), 1)).is_none());
        }
        let (a, c) = b.take().unwrap().split();
        assert_eq!(a.len() + c.len(), 5);
        let v: serde_json::Value = serde_json::from_slice(&c.body()).unwrap();
        assert!(v.get("namespace").is_none());
    }
}
