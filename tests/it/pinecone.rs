//! The Pinecone sink against the project's Pinecone-compatible server (in this process, on
//! 127.0.0.1), with faults injected: every vector computed must arrive exactly, once.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use crate::common::*;
use datafusion::arrow::array::{
    ArrayRef, Float64Array, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use pinecone_test_server::{Faults, IndexConfig, PineconeServer, ServerConfig};
use serde_json::{Value, json};

const KEY: &str = "pc-test-key-7f3a9c1e";

fn server(faults: Faults) -> PineconeServer {
    let mut config = ServerConfig::new(
        KEY,
        vec![IndexConfig::new("docs", 384), IndexConfig::new("wide", 768)],
    );
    config.faults = faults;
    PineconeServer::start(config).expect("start the Pinecone test server")
}

/// A server that answers the preflight, then 503s every upsert.
fn server_refusing_upserts() -> PineconeServer {
    server(Faults {
        rate_503: 1.0,
        paths: vec!["/vectors/upsert".into()],
        ..Default::default()
    })
}

/// `n` rows: id, text, and metadata columns of every kind Pinecone takes.
fn corpus(path: &Path, n: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("doc-{i:05}")).collect();
    let texts: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "note {i}: the {} near the {} needs a {}",
                WORDS[i % 12],
                WORDS[(i / 12) % 12],
                WORDS[(i / 144) % 12]
            )
        })
        .collect();
    let langs: Vec<&str> = (0..n)
        .map(|i| if i % 3 == 0 { "de" } else { "en" })
        .collect();
    let years: Vec<i64> = (0..n).map(|i| 2000 + (i % 25) as i64).collect();
    let scores: Vec<Option<f64>> = (0..n)
        .map(|i| (i % 7 != 0).then_some(i as f64 / 4.0))
        .collect();
    let mut tags = ListBuilder::new(StringBuilder::new());
    for i in 0..n {
        tags.values().append_value(WORDS[i % 12]);
        tags.values().append_value("all");
        tags.append(true);
    }
    let published: Vec<i64> = (0..n)
        .map(|i| 1_700_000_000_000 + i as i64 * 1000)
        .collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("year", DataType::Int64, false),
        Field::new("score", DataType::Float64, true),
        Field::new(
            "tags",
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
            true,
        ),
        Field::new(
            "published",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(texts)),
        Arc::new(StringArray::from(langs)),
        Arc::new(Int64Array::from(years)),
        Arc::new(Float64Array::from(scores)),
        Arc::new(tags.finish()),
        Arc::new(TimestampMillisecondArray::from(published)),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

/// A Pinecone pipeline over `docs.parquet`; `extra` lines go under `sink.pinecone`.
fn pinecone_yaml(server: &PineconeServer, extra: &str) -> String {
    format!(
        "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  text: text\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    api_key: ${{PINECONE_API_KEY}}\n{extra}",
        server.controller_url()
    )
}

fn run_with_key(dir: &Path, key: &str, args: &[&str]) -> Output {
    embedflow_env(dir, args, &[("PINECONE_API_KEY", Some(key))])
}

fn run(dir: &Path, args: &[&str]) -> Output {
    run_with_key(dir, KEY, args)
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn every_vector_arrives_exactly_despite_429_503_and_dropped_connections() {
    let dir = tempfile::tempdir().unwrap();
    // 50 requests of 20: enough for faults of every kind to be injected.
    let n = 1_000;
    corpus(&dir.path().join("docs.parquet"), n);

    // The same input through the Parquet sink: the vectors as computed.
    std::fs::write(
        dir.path().join("parquet.yaml"),
        pipeline_yaml("docs.parquet", "out", ""),
    )
    .unwrap();
    assert_ok(&run(dir.path(), &["run", "parquet.yaml", "--no-progress"]));
    let expected: BTreeMap<String, Vec<f32>> = read_vectors(&dir.path().join("out/part-0.parquet"))
        .into_iter()
        .collect();
    assert_eq!(expected.len(), n);

    let srv = server(Faults {
        rate_429: 0.10,
        rate_503: 0.05,
        rate_drop: 0.02,
        retry_after_secs: Some(1),
        ..Default::default()
    });
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(
            &srv,
            "    namespace: prod\n    metadata: [lang, year, score, tags, published, text]\n    batch_size: 20\n    max_retries: 12\n",
        ),
    )
    .unwrap();
    let args = [
        "run",
        "pc.yaml",
        "--no-progress",
        "--summary-json",
        "summary.json",
    ];
    let o = run(dir.path(), &args);
    assert_ok(&o);
    let s = summary(dir.path());
    assert_eq!(s["rows_written"], n as u64, "{s}");
    assert_eq!(s["rows_failed"], 0, "{s}");
    let faults = srv.fault_counts();
    assert!(
        faults.throttled + faults.unavailable > 0,
        "no faults were injected: {faults:?}"
    );
    assert!(s["retries"].as_u64().unwrap() > 0, "{s}");

    let stored = srv.records("docs", "prod");
    assert_eq!(stored.len(), n, "every id");
    // Every id arrived, and nothing was sent twice except what a dropped connection may have
    // applied before it dropped (at most one request of 20 per drop).
    let sent = srv.vectors_upserted("docs");
    assert!(
        sent >= n as u64 && sent <= n as u64 + 20 * faults.dropped,
        "{sent} vectors sent for {n} rows with {} drops",
        faults.dropped
    );
    let mut worst = 0f32;
    for (id, want) in &expected {
        let got = stored.get(id).unwrap_or_else(|| panic!("{id} missing"));
        for (a, b) in got.values.iter().zip(want) {
            worst = worst.max((a - b).abs());
        }
    }
    // JSON carries f32 exactly (shortest round-trip form): the stored vectors are the
    // computed ones, up to the run-to-run float noise of the model itself.
    assert!(worst <= 1e-6, "largest difference {worst}");

    let md = |id: &str| stored[id].metadata.clone().expect("metadata");
    let m0 = md("doc-00000");
    assert_eq!(m0["lang"], "de");
    assert_eq!(m0["year"], 2000);
    assert!(
        m0.get("score").is_none(),
        "null metadata is left out: {m0:?}"
    );
    assert_eq!(m0["tags"], json!(["river", "all"]));
    assert_eq!(m0["published"], "2023-11-14T22:13:20");
    assert_eq!(m0["text"], "note 0: the river near the river needs a river");
    assert_eq!(md("doc-00001")["score"], 0.25);

    // A re-run overwrites instead of duplicating.
    let o = run(dir.path(), &args);
    assert_ok(&o);
    let again = srv.records("docs", "prod");
    assert_eq!(again.len(), n);
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        stored.keys().collect::<Vec<_>>()
    );
}

#[test]
fn dropped_connections_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 300);
    let srv = server(Faults {
        rate_drop: 0.3,
        ..Default::default()
    });
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(&srv, "    batch_size: 10\n    max_retries: 20\n"),
    )
    .unwrap();
    assert_ok(&run(dir.path(), &["run", "pc.yaml", "--no-progress"]));
    let dropped = srv.fault_counts().dropped;
    assert!(dropped > 0);
    assert_eq!(srv.records("docs", "").len(), 300);
    let sent = srv.vectors_upserted("docs");
    assert!(
        (300..=300 + 10 * dropped).contains(&sent),
        "{sent} vectors sent for 300 rows with {dropped} drops"
    );
}

#[test]
fn key_columns_make_stable_ids_and_duplicates_are_counted_as_the_index_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 40);
    let srv = server(Faults::default());
    let yaml = pinecone_yaml(&srv, "")
        .replace("  id: id\n", "  key: [lang, year]\n")
        .replace(
            "    docs: { path: docs.parquet }\n",
            "    docs: { path: docs.parquet }\n  sql: SELECT text, lang, year FROM docs\n",
        );
    std::fs::write(dir.path().join("pc.yaml"), &yaml).unwrap();
    // 40 rows, but (lang, year) repeats: refused before anything is sent...
    let o = run(dir.path(), &["run", "pc.yaml", "--no-progress"]);
    assert_fails_with(&o, 1, "ids appear on more than one row");
    assert_eq!(srv.upsert_requests("docs"), 0);
    // ...unless keep_last is chosen: one vector per distinct key, and the summary counts those.
    let yaml = yaml.replace(
        "  key: [lang, year]\n",
        "  key: [lang, year]\n  duplicate_ids: keep_last\n",
    );
    std::fs::write(dir.path().join("pc.yaml"), yaml).unwrap();
    let args = [
        "run",
        "pc.yaml",
        "--no-progress",
        "--summary-json",
        "summary.json",
    ];
    assert_ok(&run(dir.path(), &args));
    let first = srv.records("docs", "");
    let distinct: std::collections::BTreeSet<(bool, usize)> =
        (0..40).map(|i| (i % 3 == 0, i % 25)).collect();
    assert_eq!(first.len(), distinct.len());
    // Every row was sent exactly once (the map above cannot see a duplicate; this count can).
    assert_eq!(srv.vectors_upserted("docs"), 40);
    let s = summary(dir.path());
    assert_eq!(s["rows_embedded"], 40, "{s}");
    assert_eq!(s["rows_written"], distinct.len() as u64, "{s}");
    assert_eq!(s["duplicate_rows"], 40 - distinct.len() as u64, "{s}");
    assert!(
        first
            .keys()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    assert_ok(&run(dir.path(), &args));
    let second = srv.records("docs", "");
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    assert_eq!(srv.vectors_upserted("docs"), 80);
}

#[test]
fn an_unreachable_index_stops_the_embedding_and_keeps_what_was_computed() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000;
    corpus(&dir.path().join("docs.parquet"), n);
    // The index answers the preflight, then every upsert fails.
    let srv = server_refusing_upserts();
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(
            &srv,
            "    max_retries: 100\n    give_up_after_secs: 1\n    dead_letter: failed.jsonl\n",
        ),
    )
    .unwrap();
    // One ONNX Runtime thread: the run embeds until it gives the index up, whatever its speed;
    // a second core would only embed more rows for the dead-letter file.
    let o = run(
        dir.path(),
        &[
            "run",
            "pc.yaml",
            "--no-progress",
            "--set",
            "embed.threads=1",
        ],
    );
    assert_fails_with(&o, 1, "is unreachable: every request failed for");
    assert!(stderr(&o).contains("failed.jsonl"), "{}", stderr(&o));
    assert!(stderr(&o).contains("503"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("rows read"), "{}", stdout(&o));
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("failed.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // It stopped soon after the limit, before all 20,000 rows were embedded (a count, not a
    // time: a slower machine embeds fewer rows in the same seconds).
    assert!(!lines.is_empty() && lines.len() < n, "{} rows", lines.len());
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["vector"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        lines.len(),
        "a row twice in the dead-letter file"
    );
    assert_eq!(lines[0]["vector"]["values"].as_array().unwrap().len(), 384);
}

#[test]
fn a_non_ascii_namespace_says_so() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 5);
    let srv = server(Faults::default());
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(&srv, "    namespace: caf\u{e9}\n"),
    )
    .unwrap();
    let o = run(dir.path(), &["run", "pc.yaml"]);
    assert_fails_with(&o, 2, "sink.pinecone.namespace");
    assert!(
        stderr(&o).contains("non-ASCII character `\u{e9}`"),
        "{}",
        stderr(&o)
    );
}

/// Preflight failures: exit 2, a clear message, and nothing embedded or sent.
fn assert_preflight_fails(o: &Output, srv: &PineconeServer, needle: &str) {
    assert_fails_with(o, 2, needle);
    assert!(
        !stdout(o).contains("rows read"),
        "no run summary: {}",
        stdout(o)
    );
    assert_eq!(srv.upsert_requests("docs"), 0);
    assert_eq!(srv.upsert_requests("wide"), 0);
}

#[test]
fn preflight_checks_key_index_and_dimension_before_embedding() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 20);
    let srv = server(Faults::default());
    std::fs::write(dir.path().join("pc.yaml"), pinecone_yaml(&srv, "")).unwrap();

    let o = run_with_key(dir.path(), "not-the-key", &["run", "pc.yaml"]);
    assert_preflight_fails(&o, &srv, "Pinecone rejected the API key");

    let o = run(
        dir.path(),
        &["run", "pc.yaml", "--set", "sink.pinecone.index=missing"],
    );
    assert_preflight_fails(&o, &srv, "Pinecone index `missing` does not exist");

    let o = run(
        dir.path(),
        &["run", "pc.yaml", "--set", "sink.pinecone.index=wide"],
    );
    assert_preflight_fails(&o, &srv, "has dimension 768, but the model makes 384");

    // With an explicit data-plane host the control plane is skipped, and the data plane
    // checks the key.
    let host = srv.index_url("docs").unwrap();
    let o = run_with_key(
        dir.path(),
        "not-the-key",
        &[
            "run",
            "pc.yaml",
            "--set",
            &format!("sink.pinecone.host={host}"),
        ],
    );
    assert_preflight_fails(&o, &srv, "Pinecone rejected the API key");

    // validate runs the same checks.
    let o = run(
        dir.path(),
        &["validate", "pc.yaml", "--set", "sink.pinecone.index=wide"],
    );
    assert_fails_with(&o, 2, "has dimension 768");
}

#[test]
fn api_key_never_appears_in_output_even_at_trace_level() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 30);
    let srv = server(Faults {
        rate_429: 0.2,
        ..Default::default()
    });
    std::fs::write(dir.path().join("pc.yaml"), pinecone_yaml(&srv, "")).unwrap();
    let mut outputs = vec![
        run(dir.path(), &["-vvv", "run", "pc.yaml"]),
        run(dir.path(), &["-vvv", "validate", "pc.yaml"]),
        run(dir.path(), &["-vvv", "explain", "pc.yaml"]),
        run(dir.path(), &["-vvv", "query", "pc.yaml", "river"]),
    ];
    assert_ok(&outputs[0]);
    // A key the server rejects is not echoed back either.
    outputs.push(run_with_key(
        dir.path(),
        "wrong-key-5d1b7e",
        &["-vvv", "run", "pc.yaml"],
    ));
    // Nor when it is written in the pipeline file itself and the file is invalid.
    std::fs::write(
        dir.path().join("bad.yaml"),
        pinecone_yaml(&srv, "    batch_size: 5000\n")
            .replace("${PINECONE_API_KEY}", "inline-secret-8c2f"),
    )
    .unwrap();
    outputs.push(run(dir.path(), &["-vvv", "run", "bad.yaml"]));
    for o in &outputs {
        let all = format!("{}{}", stdout(o), stderr(o));
        assert!(all.contains("TRACE") || all.contains("error:"), "{all}");
        for secret in [KEY, "wrong-key-5d1b7e", "inline-secret-8c2f"] {
            assert!(!all.contains(secret), "the key leaked:\n{all}");
        }
    }
}

#[test]
fn rows_that_cannot_be_written_go_to_the_dead_letter_file_and_exit_3() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 25);
    let srv = server_refusing_upserts();
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(
            &srv,
            "    batch_size: 10\n    max_retries: 1\n    dead_letter: failed/rows.jsonl\n",
        ),
    )
    .unwrap();
    let o = run(
        dir.path(),
        &[
            "run",
            "pc.yaml",
            "--no-progress",
            "--summary-json",
            "summary.json",
        ],
    );
    assert_fails_with(&o, 3, "failed/rows.jsonl");
    assert!(stdout(&o).contains("25 rows NOT written"), "{}", stdout(&o));
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("failed/rows.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 25);
    assert_eq!(lines[0]["vector"]["values"].as_array().unwrap().len(), 384);
    assert!(lines[0]["error"].as_str().unwrap().contains("503"));
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["vector"]["id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25);
    let s = summary(dir.path());
    assert_eq!(s["rows_failed"], 25);
    assert_eq!(s["rows_written"], 0);
    assert_eq!(s["dead_letter"], "failed/rows.jsonl");
}

#[test]
fn a_request_pinecone_refuses_fails_fast_with_its_message_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let ids = ["ok-1", "caf\u{e9}-2", "ok-3"];
    write_text_parquet(
        &dir.path().join("docs.parquet"),
        &ids,
        &[Some("a"), Some("b"), Some("c")],
    );
    let srv = server(Faults::default());
    std::fs::write(dir.path().join("pc.yaml"), pinecone_yaml(&srv, "")).unwrap();
    let o = run(dir.path(), &["run", "pc.yaml", "--no-progress"]);
    assert_fails_with(&o, 1, "Vector ID must be ASCII");
    assert!(stderr(&o).contains("ok-1"), "names the ids: {}", stderr(&o));
}

/// Rows with `pad` bytes of text each, sent as metadata.
fn wide_rows(dir: &Path, n: usize, pad: usize) {
    let ids: Vec<String> = (0..n).map(|i| format!("w{i}")).collect();
    let texts: Vec<String> = (0..n)
        .map(|i| format!("{i} {}", "lorem ipsum \"dolor\" ".repeat(pad / 20)))
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let texts: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    write_text_parquet(&dir.join("docs.parquet"), &ids, &texts);
}

#[test]
fn requests_are_bounded_by_bytes_not_only_by_count() {
    let dir = tempfile::tempdir().unwrap();
    // 120 rows of ~30 KB metadata: 3.6 MB in one count-bounded batch, over the 2 MB limit.
    wide_rows(dir.path(), 120, 30_000);
    let srv = server(Faults::default());
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(&srv, "    metadata: [text]\n    batch_size: 1000\n").replace(
            "text: text\n",
            "text: text\n  batch_tokens: 100000\n  max_seq_length: 16\n",
        ),
    )
    .unwrap();
    assert_ok(&run(dir.path(), &["run", "pc.yaml", "--no-progress"]));
    let stored = srv.records("docs", "");
    assert_eq!(stored.len(), 120);
    assert!(srv.upsert_requests("docs") >= 2);
    let text = stored["w7"].metadata.as_ref().unwrap()["text"]
        .as_str()
        .unwrap();
    assert!(text.starts_with("7 lorem ipsum"));
}

#[test]
fn oversized_metadata_errors_with_the_id_or_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    wide_rows(dir.path(), 3, 50_000);
    let srv = server(Faults::default());
    let yaml = pinecone_yaml(&srv, "    metadata: [text, n]\n")
        .replace("text: text\n", "text: text\n  max_seq_length: 16\n");
    std::fs::write(dir.path().join("pc.yaml"), &yaml).unwrap();
    let o = run(dir.path(), &["run", "pc.yaml", "--no-progress"]);
    assert_fails_with(&o, 1, "over Pinecone's 40960-byte limit");
    assert!(stderr(&o).contains("id `w"), "{}", stderr(&o));
    assert_eq!(srv.records("docs", "").len(), 0);

    let o = run(
        dir.path(),
        &[
            "run",
            "pc.yaml",
            "--no-progress",
            "--set",
            "sink.pinecone.oversized_metadata=truncate",
            "--set",
            "sink.pinecone.truncate_field=text",
        ],
    );
    assert_ok(&o);
    let stored = srv.records("docs", "");
    assert_eq!(stored.len(), 3);
    for r in stored.values() {
        let md = r.metadata.as_ref().unwrap();
        let size = serde_json::to_vec(md).unwrap().len();
        // Cut to fit, not far below the limit (escaped quotes count twice).
        assert!((36_000..=40_960).contains(&size), "{size} bytes");
        assert!(md.contains_key("n"), "other fields kept");
    }
}

#[test]
fn query_searches_the_index_with_filter_and_namespace() {
    let dir = tempfile::tempdir().unwrap();
    corpus(&dir.path().join("docs.parquet"), 200);
    let srv = server(Faults::default());
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(&srv, "    namespace: q\n    metadata: [lang, year]\n"),
    )
    .unwrap();
    assert_ok(&run(dir.path(), &["run", "pc.yaml", "--no-progress"]));
    let q = |extra: &[&str]| {
        let mut args = vec![
            "query",
            "pc.yaml",
            "note 13: the compiler near the compiler needs a river",
            "-k",
            "3",
            "--format",
            "json",
        ];
        args.extend_from_slice(extra);
        let o = run(dir.path(), &args);
        assert_ok(&o);
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let hits = q(&[]);
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["id"], "doc-00013");
    assert!(hits[0]["score"].as_f64().unwrap() > 0.99);
    let md: Value = serde_json::from_str(hits[0]["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(md["lang"], "en");

    let hits = q(&["--filter", r#"{"lang": {"$eq": "de"}}"#]);
    assert!(!hits.is_empty());
    for h in &hits {
        let md: Value = serde_json::from_str(h["metadata"].as_str().unwrap()).unwrap();
        assert_eq!(md["lang"], "de");
    }
    assert!(q(&["--namespace", "elsewhere"]).is_empty());
}

#[test]
fn chunks_carry_their_source_and_a_query_shows_each_source_once() {
    let dir = tempfile::tempdir().unwrap();
    let long: String = (0..40)
        .map(|i| format!("Paragraph {i}: the harbor ledger records a shipment of violins."))
        .collect::<Vec<_>>()
        .join(" ");
    write_text_parquet(
        &dir.path().join("docs.parquet"),
        &["ledger", "other"],
        &[Some(&long), Some("A bakery near the glacier sells bread.")],
    );
    let srv = server(Faults::default());
    std::fs::write(
        dir.path().join("pc.yaml"),
        pinecone_yaml(&srv, "    metadata: [text]\n").replace(
            "  id: id\n",
            "  id: id\n  chunking: { max_tokens: 32, overlap: 4 }\n",
        ),
    )
    .unwrap();
    assert_ok(&run(dir.path(), &["run", "pc.yaml", "--no-progress"]));
    let stored = srv.records("docs", "");
    let ledger: Vec<_> = stored.keys().filter(|k| k.starts_with("ledger#")).collect();
    assert!(ledger.len() > 5, "{} chunks", ledger.len());
    assert_eq!(srv.vectors_upserted("docs"), stored.len() as u64);
    let md = stored["ledger#1"].metadata.clone().expect("metadata");
    assert_eq!(md["source_id"], "ledger");
    assert_eq!(md["chunk"], 1);
    assert!(long.contains(md["text"].as_str().unwrap()));

    let o = run(
        dir.path(),
        &[
            "query",
            "pc.yaml",
            "harbor ledger shipment of violins",
            "-k",
            "2",
            "--format",
            "json",
        ],
    );
    assert_ok(&o);
    let hits: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sources: Vec<String> = hits
        .iter()
        .map(|h| {
            let md: Value = serde_json::from_str(h["metadata"].as_str().unwrap()).unwrap();
            md["source_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(sources, ["ledger", "other"], "{hits:?}");
}

#[test]
fn a_dead_letter_file_is_replayed_with_the_same_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let n = 120;
    corpus(&d.join("docs.parquet"), n);
    std::fs::write(
        d.join("parquet.yaml"),
        pipeline_yaml("docs.parquet", "out", ""),
    )
    .unwrap();
    assert_ok(&run(d, &["run", "parquet.yaml", "--no-progress"]));
    let expected: BTreeMap<String, Vec<f32>> = read_vectors(&d.join("out/part-0.parquet"))
        .into_iter()
        .collect();

    let broken = server_refusing_upserts();
    let extra = "    namespace: prod\n    metadata: [lang, year]\n    batch_size: 50\n    max_retries: 1\n    dead_letter: failed.jsonl\n";
    std::fs::write(d.join("pc.yaml"), pinecone_yaml(&broken, extra)).unwrap();
    let o = run(d, &["run", "pc.yaml", "--no-progress"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let lines = std::fs::read_to_string(d.join("failed.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), n);

    // Against the same broken index, the replay fails the same way: exit 3, a new file.
    let o = run(
        d,
        &[
            "replay",
            "failed.jsonl",
            "--pipeline",
            "pc.yaml",
            "--set",
            "sink.pinecone.dead_letter=again.jsonl",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(d.join("again.jsonl"))
            .unwrap()
            .lines()
            .count(),
        n
    );

    // Against a healthy index every vector lands, exactly as computed, with its metadata. It
    // still answers one request in ten with a 429, so the replay gets the retries a real run
    // would have (with the broken runs' one retry, a request refused twice in a row, one
    // chance in a hundred, would land in the dead-letter file again).
    let healthy = server(Faults {
        rate_429: 0.1,
        retry_after_secs: Some(1),
        ..Default::default()
    });
    let controller = format!("sink.pinecone.controller={}", healthy.controller_url());
    let o = run(
        d,
        &[
            "replay",
            "failed.jsonl",
            "--pipeline",
            "pc.yaml",
            "--set",
            &controller,
            "--set",
            "sink.pinecone.max_retries=8",
            "--summary-json",
            "summary.json",
        ],
    );
    assert_ok(&o);
    let s = summary(d);
    assert_eq!(s["rows_read"], n as u64, "{s}");
    assert_eq!(s["rows_written"], n as u64, "{s}");
    let stored = healthy.records("docs", "prod");
    assert_eq!(stored.len(), n);
    for (id, want) in &expected {
        let got = &stored[id];
        assert_eq!(&got.values, want, "{id}: the computed vector, bit for bit");
        assert!(got.metadata.as_ref().unwrap().contains_key("lang"), "{id}");
    }

    // A namespace other than the one the vectors were meant for is refused, naming both.
    let o = run(
        d,
        &[
            "replay",
            "failed.jsonl",
            "--pipeline",
            "pc.yaml",
            "--set",
            &controller,
            "--set",
            "sink.pinecone.namespace=other",
        ],
    );
    assert_fails_with(&o, 2, "meant for namespace `prod`");
    // A broken line names the file and the line.
    std::fs::write(
        d.join("bad.jsonl"),
        format!("{}\nnot json\n", lines.lines().next().unwrap()),
    )
    .unwrap();
    let o = run(
        d,
        &[
            "replay",
            "bad.jsonl",
            "--pipeline",
            "pc.yaml",
            "--set",
            &controller,
        ],
    );
    assert_fails_with(&o, 1, "bad.jsonl, line 2");
}

#[test]
fn vectors_that_exist_already_go_to_pinecone_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 200);
    std::fs::write(
        d.join("parquet.yaml"),
        pipeline_yaml("docs.parquet", "out", ""),
    )
    .unwrap();
    assert_ok(&run(d, &["run", "parquet.yaml", "--no-progress"]));
    let expected: BTreeMap<String, Vec<f32>> = read_vectors(&d.join("out/part-0.parquet"))
        .into_iter()
        .collect();

    let srv = server(Faults::default());
    let yaml = |index: &str| {
        format!(
            "source:\n  tables:\n    v: {{ path: out/part-0.parquet }}\nembed:\n  vector: vector\n  id: id\nsink:\n  pinecone:\n    index: {index}\n    controller: {}\n    metadata: [lang]\n",
            srv.controller_url()
        )
    };
    std::fs::write(d.join("vectors.yaml"), yaml("docs")).unwrap();
    let o = run(d, &["-v", "run", "vectors.yaml", "--no-progress"]);
    assert_ok(&o);
    assert!(
        !stderr(&o).contains("loaded from"),
        "no model: {}",
        stderr(&o)
    );
    let stored = srv.records("docs", "");
    assert_eq!(stored.len(), expected.len());
    for (id, want) in &expected {
        assert_eq!(&stored[id].values, want, "{id}");
        assert_eq!(
            stored[id].metadata.as_ref().unwrap()["lang"]
                .as_str()
                .unwrap()
                .len(),
            2
        );
    }
    // The dimension is still checked before anything is sent.
    std::fs::write(d.join("wide.yaml"), yaml("wide")).unwrap();
    let o = run(d, &["run", "wide.yaml", "--no-progress"]);
    assert_fails_with(&o, 2, "dimension 768");
    assert!(srv.records("wide", "").is_empty());
    // A column that is not fixed-size vectors says how to convert it.
    let bad = yaml("docs").replace("vector: vector", "vector: text");
    std::fs::write(d.join("bad.yaml"), bad).unwrap();
    let o = run(d, &["run", "bad.yaml", "--no-progress"]);
    assert_fails_with(&o, 1, "FixedSizeList(384, Float32)");
}

#[test]
fn vector_search_asks_the_index_from_sql() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 100);
    let srv = server(Faults::default());
    std::fs::write(
        d.join("pc.yaml"),
        pinecone_yaml(&srv, "    metadata: [lang, text]\n"),
    )
    .unwrap();
    assert_ok(&run(d, &["run", "pc.yaml", "--no-progress"]));
    let sql = r#"SELECT id, score, metadata FROM vector_search('sink', embed('note 7: the compiler near the river needs a river'), 5, '{"lang": {"$eq": "de"}}')"#;
    let o = run(
        d,
        &["sql", "--pipeline", "pc.yaml", "--format", "json", sql],
    );
    assert_ok(&o);
    let rows: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 5, "{rows:?}");
    for r in &rows {
        let md: Value = serde_json::from_str(r["metadata"].as_str().unwrap()).unwrap();
        assert_eq!(md["lang"], "de", "the filter applies: {r}");
    }
    let scores: Vec<f64> = rows.iter().map(|r| r["score"].as_f64().unwrap()).collect();
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "best first: {scores:?}"
    );
}

#[test]
fn insert_into_a_pinecone_sink_has_the_writers_guarantees() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 150);
    let insert = "INSERT INTO sink (id, vector, lang) SELECT id, embed(text), lang FROM docs";
    let srv = server(Faults {
        rate_429: 0.1,
        retry_after_secs: Some(1),
        ..Default::default()
    });
    std::fs::write(
        d.join("pc.yaml"),
        pinecone_yaml(&srv, "    metadata: [lang]\n    batch_size: 40\n"),
    )
    .unwrap();
    // An INSERT writes: refused without --allow-writes, before anything is embedded.
    let o = run(d, &["sql", "--pipeline", "pc.yaml", insert]);
    assert_fails_with(&o, 2, "--allow-writes");
    assert_eq!(srv.upsert_requests("docs"), 0);
    let o = run(
        d,
        &["sql", "--pipeline", "pc.yaml", "--allow-writes", insert],
    );
    assert_ok(&o);
    let stored = srv.records("docs", "");
    assert_eq!(stored.len(), 150);
    assert!(
        stored
            .values()
            .all(|r| r.metadata.as_ref().unwrap().contains_key("lang"))
    );

    // Every upsert refused: the rows go to the dead-letter file, and the command exits 3.
    let broken = server_refusing_upserts();
    std::fs::write(
        d.join("broken.yaml"),
        pinecone_yaml(
            &broken,
            "    metadata: [lang]\n    max_retries: 1\n    dead_letter: failed.jsonl\n",
        ),
    )
    .unwrap();
    let o = run(
        d,
        &["sql", "--pipeline", "broken.yaml", "--allow-writes", insert],
    );
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(d.join("failed.jsonl"))
            .unwrap()
            .lines()
            .count(),
        150
    );
}

#[test]
fn an_id_pinecone_cannot_take_is_refused_before_anything_is_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = "x".repeat(513);
    let ids = ["a", long.as_str(), "c"];
    let texts = [Some("first"), Some("second"), Some("third")];
    write_text_parquet(&d.join("docs.parquet"), &ids, &texts);
    let srv = server(Faults::default());
    std::fs::write(d.join("pc.yaml"), pinecone_yaml(&srv, "")).unwrap();
    let o = run(d, &["run", "pc.yaml", "--no-progress"]);
    assert_fails_with(
        &o,
        1,
        "1 ids are longer than the 512 bytes a Pinecone id may have",
    );
    assert!(stderr(&o).contains("(513 bytes)"), "{}", stderr(&o));
    assert_eq!(srv.upsert_requests("docs"), 0, "nothing upserted");
    assert!(!stdout(&o).contains("rows read"), "{}", stdout(&o));
    // 512 bytes is fine.
    let fits = "y".repeat(512);
    write_text_parquet(&d.join("docs.parquet"), &["a", fits.as_str()], &texts[..2]);
    assert_ok(&run(d, &["run", "pc.yaml", "--no-progress"]));
    assert_eq!(srv.records("docs", "").len(), 2);
}
