//! `src/sink/pinecone/batcher.rs`

use embedflow::sink::pinecone::batcher::*;
use embedflow::sink::pinecone::records::EncodedRecord;

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
