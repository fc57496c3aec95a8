//! The Pinecone-compatible test server keeps Pinecone's contract: shapes, limits, error bodies.
//! (If it were lenient, the writer's tests would prove nothing.)

use pinecone_test_server::{Faults, IndexConfig, PineconeServer, ServerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY: &str = "server-test-key";

struct Fixture {
    server: PineconeServer,
    http: reqwest::Client,
    base: String,
}

async fn fixture(faults: Faults) -> Fixture {
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("idx", 3)]);
    config.faults = faults;
    let server = PineconeServer::bind(config).await.unwrap();
    let base = server.index_url("idx").unwrap();
    Fixture {
        server,
        http: reqwest::Client::new(),
        base,
    }
}

impl Fixture {
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Api-Key", KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
    async fn get(&self, path_and_query: &str) -> (StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path_and_query}", self.base))
            .header("Api-Key", KEY)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn vectors(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("v{i:04}"), "values": [1.0, i as f32, 0.5]}))
        .collect()
}

#[tokio::test]
async fn control_plane_describes_indexes_and_checks_the_key() {
    let f = fixture(Faults::default()).await;
    let url = format!("{}/indexes/idx", f.server.controller_url());
    let r = f
        .http
        .get(&url)
        .header("Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(d["dimension"], 3);
    assert_eq!(d["metric"], "cosine");
    assert!(
        !d["host"].as_str().unwrap().contains("://"),
        "host has no scheme"
    );
    let r = f
        .http
        .get(&url)
        .header("Api-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "UNAUTHENTICATED");
    let r = f
        .http
        .get(format!("{}/indexes/other", f.server.controller_url()))
        .header("Api-Key", KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The data plane answers a bad key in plain text.
    let r = f
        .http
        .post(format!("{}/describe_index_stats", f.base))
        .header("Api-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.text().await.unwrap(), "Invalid API Key");
}

#[tokio::test]
async fn upsert_enforces_pinecone_limits() {
    let f = fixture(Faults::default()).await;
    let (s, b) = f
        .post("/vectors/upsert", json!({"vectors": vectors(1001)}))
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["code"], 3);
    let (s, b) = f
        .post(
            "/vectors/upsert",
            json!({"vectors": [{"id": "a", "values": [1.0, 2.0]}]}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("Vector dimension 2 does not match the dimension of the index 3")
    );
    let (s, _) = f
        .post(
            "/vectors/upsert",
            json!({"vectors": [{"id": "a", "values": [0.0, 0.0, 0.0]}]}),
        )
        .await;
    assert_eq!(s, 400);
    for md in [
        json!({"x": null}),
        json!({"x": {"nested": 1}}),
        json!({"$x": 1}),
        json!({"x": [1, 2]}),
        json!({"x": "y".repeat(41_000)}),
    ] {
        let (s, b) = f
            .post(
                "/vectors/upsert",
                json!({"vectors": [{"id": "a", "values": [1.0, 0.0, 0.0], "metadata": md}]}),
            )
            .await;
        assert_eq!(s, 400, "{b}");
    }
    let (s, _) = f
        .post(
            "/vectors/upsert",
            json!({"vectors": [{"id": "x".repeat(513), "values": [1.0, 0.0, 0.0]}]}),
        )
        .await;
    assert_eq!(s, 400);
    // Over 2 MB: Pinecone's message, which the writer recognises and splits on.
    let big: Vec<Value> = (0..900)
        .map(|i| json!({"id": format!("b{i}"), "values": [1.0, 0.0, 0.0], "metadata": {"t": "z".repeat(3000)}}))
        .collect();
    let (s, b) = f.post("/vectors/upsert", json!({"vectors": big})).await;
    assert_eq!(s, 400);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("exceeds the maximum supported size of 2MB")
    );
    assert_eq!(f.server.records("idx", "").len(), 0, "nothing half-applied");
}

#[tokio::test]
async fn upsert_fetch_list_query_update_delete_and_stats() {
    let f = fixture(Faults::default()).await;
    let (s, b) = f
        .post(
            "/vectors/upsert",
            json!({"vectors": vectors(250), "namespace": "ns"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["upsertedCount"], 250);
    let (_, b) = f
        .get("/vectors/fetch?ids=v0001&ids=v0002&ids=zz&namespace=ns")
        .await;
    assert_eq!(b["vectors"].as_object().unwrap().len(), 2);
    assert_eq!(b["vectors"]["v0002"]["values"], json!([1.0, 2.0, 0.5]));

    let mut seen = 0;
    let mut token: Option<String> = None;
    loop {
        let q = match &token {
            Some(t) => format!("/vectors/list?namespace=ns&paginationToken={t}"),
            None => "/vectors/list?namespace=ns".to_string(),
        };
        let (s, b) = f.get(&q).await;
        assert_eq!(s, 200);
        seen += b["vectors"].as_array().unwrap().len();
        match b["pagination"]["next"].as_str() {
            Some(t) => token = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 250);
    let (s, _) = f.get("/vectors/list?namespace=ns&limit=101").await;
    assert_eq!(s, 400);

    let (_, b) = f
        .post(
            "/query",
            json!({"topK": 2, "vector": [1.0, 7.0, 0.5], "namespace": "ns", "includeValues": true}),
        )
        .await;
    assert_eq!(b["matches"][0]["id"], "v0007");
    let (s, _) = f
        .post("/query", json!({"topK": 0, "vector": [1.0, 7.0, 0.5]}))
        .await;
    assert_eq!(s, 400);

    let (s, _) = f
        .post(
            "/vectors/update",
            json!({"id": "v0003", "setMetadata": {"tag": "x"}, "namespace": "ns"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = f
        .post(
            "/query",
            json!({"topK": 5, "vector": [1.0, 1.0, 1.0], "namespace": "ns", "filter": {"tag": {"$eq": "x"}}, "includeMetadata": true}),
        )
        .await;
    assert_eq!(b["matches"].as_array().unwrap().len(), 1);
    assert_eq!(b["matches"][0]["metadata"]["tag"], "x");

    let (s, _) = f
        .post(
            "/vectors/delete",
            json!({"ids": ["v0000", "v0001"], "namespace": "ns"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, b) = f.post("/describe_index_stats", json!({})).await;
    assert_eq!(b["namespaces"]["ns"]["vectorCount"], 248);
    assert_eq!(b["totalVectorCount"], 248);
    assert_eq!(b["dimension"], 3);
}

#[tokio::test]
async fn faults_are_injected_as_configured() {
    let f = fixture(Faults {
        rate_429: 1.0,
        retry_after_secs: Some(2),
        ..Default::default()
    })
    .await;
    let r = f
        .http
        .post(format!("{}/vectors/upsert", f.base))
        .header("Api-Key", KEY)
        .json(&json!({"vectors": vectors(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "2");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], 8);

    let f = fixture(Faults {
        rate_drop: 1.0,
        ..Default::default()
    })
    .await;
    let e = f
        .http
        .post(format!("{}/vectors/upsert", f.base))
        .header("Api-Key", KEY)
        .json(&json!({"vectors": vectors(1)}))
        .send()
        .await;
    assert!(e.is_err(), "the connection is dropped without an answer");
    assert_eq!(f.server.fault_counts().dropped, 1);
}
