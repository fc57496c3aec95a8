//! Pinecone bulk import (`sink.pinecone.import`) against the project's test servers: the run
//! writes Pinecone's import layout to a real S3 server (s3s-fs), the Pinecone test server
//! imports it from there as Pinecone does (checking the layout, the columns, the namespace and
//! the file size), and a killed run re-attaches to the import it started.

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use crate::common::*;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use pinecone_test_server::{ImportStorage, IndexConfig, PineconeServer, ServerConfig};
use serde_json::Value;

const KEY: &str = "pc-test-key-import-5d1e";

fn pinecone(s3: &S3Server, file_delay: Duration, max_file_bytes: u64) -> PineconeServer {
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)]);
    let mut storage = ImportStorage::new(&s3.endpoint, ACCESS_KEY, SECRET_KEY);
    storage.file_delay = file_delay;
    storage.max_file_bytes = max_file_bytes;
    config.import_storage = Some(storage);
    PineconeServer::start(config).expect("start the Pinecone test server")
}

fn corpus(path: &Path, n: usize) {
    corpus_edited(path, n, &[]);
}

/// The corpus of `n` rows, the texts of rows `edited` changed.
fn corpus_edited(path: &Path, n: usize, edited: &[usize]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("year", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("doc-{i:04}")),
        )),
        Arc::new(StringArray::from_iter_values((0..n).map(|i| {
            format!(
                "note {i}: the {} near the {}{}",
                WORDS[i % 12],
                WORDS[(i / 12) % 12],
                if edited.contains(&i) { ", edited" } else { "" }
            )
        }))),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| if i % 3 == 0 { "de" } else { "en" }),
        )),
        Arc::new(Int64Array::from_iter_values(
            (0..n).map(|i| 2000 + (i % 25) as i64),
        )),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

/// A pipeline importing `docs.parquet` into namespace `backfill` through `s3://imports/docs/`.
fn yaml(srv: &PineconeServer, import_extra: &str) -> String {
    format!(
        "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    namespace: backfill\n    metadata: [lang, year]\n    import:\n      uri: s3://imports/docs/\n      file_rows: 100\n{import_extra}",
        srv.controller_url()
    )
}

fn env(s3: &S3Server) -> Vec<(&'static str, String)> {
    let mut e = s3.env();
    e.push(("PINECONE_API_KEY", KEY.to_string()));
    e.push(("EMBEDFLOW_LOG", "info".to_string()));
    e
}

fn embedflow_s3(s3: &S3Server, dir: &Path, args: &[&str]) -> Output {
    let e = env(s3);
    let pairs: Vec<(&str, Option<&str>)> = e.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    embedflow_env(dir, args, &pairs)
}

fn run(s3: &S3Server, dir: &Path) -> Output {
    embedflow_s3(
        s3,
        dir,
        &["run", "p.yaml", "--no-progress", "--summary-json", "s.json"],
    )
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("s.json")).unwrap()).unwrap()
}

#[test]
fn a_backfill_is_written_in_pinecones_layout_imported_and_not_imported_twice() {
    let s3 = S3Server::start();
    s3.bucket("imports");
    let srv = pinecone(&s3, Duration::ZERO, 10_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 250);
    write_file(d, "p.yaml", &yaml(&srv, ""));

    let o = run(&s3, d);
    assert_ok(&o);
    let s = summary(d);
    assert_eq!(s["rows_written"], 250, "{s}");
    assert_eq!(s["rows_embedded"], 250, "{s}");
    assert!(
        s["output"].as_str().unwrap_or("").contains("import 1"),
        "{s}"
    );
    assert!(
        stderr(&o).contains("Completed (100%, 250 records imported)"),
        "{}",
        stderr(&o)
    );

    // Pinecone's layout: <prefix>/<namespace>/*.parquet, exactly id, values, metadata.
    let keys = s3.keys("imports");
    assert_eq!(
        keys,
        [
            "docs/backfill/part-00000.parquet",
            "docs/backfill/part-00001.parquet",
            "docs/backfill/part-00002.parquet"
        ],
        "the import's files, and no marker left once it completed"
    );
    let file = s3
        .object("imports", "docs/backfill/part-00000.parquet")
        .unwrap();
    let batches = read_batches(&file);
    let schema = batches[0].schema();
    let columns: Vec<(&str, String)> = schema
        .fields()
        .iter()
        .map(|f| (f.name().as_str(), f.data_type().to_string()))
        .collect();
    assert_eq!(columns.len(), 3, "{columns:?}");
    assert_eq!(columns[0], ("id", "Utf8".to_string()));
    assert!(
        columns[1].0 == "values" && columns[1].1.contains("Float32"),
        "{columns:?}"
    );
    assert_eq!(columns[2], ("metadata", "Utf8".to_string()));

    let records = srv.records("docs", "backfill");
    assert_eq!(records.len(), 250);
    let r = &records["doc-0003"];
    assert_eq!(r.values.len(), 384);
    let norm: f32 = r.values.iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "{norm}");
    let md = r.metadata.as_ref().unwrap();
    assert_eq!(md["lang"], "de");
    assert_eq!(md["year"], 2003);
    assert_eq!(srv.imports("docs").len(), 1);

    // The namespace exists now: an import cannot write into it again, and says what to do.
    let o = run(&s3, d);
    assert_fails_with(&o, 2, "already holds 250 vectors");
    assert_eq!(srv.imports("docs").len(), 1, "no second import");
}

#[test]
fn a_killed_run_re_attaches_to_the_import_it_started() {
    let s3 = S3Server::start();
    s3.bucket("imports");
    // Each file takes a second to import: the run is killed while the import runs.
    let srv = pinecone(&s3, Duration::from_millis(1500), 10_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 250);
    write_file(d, "p.yaml", &yaml(&srv, ""));
    kill_during_import(&s3, &srv, d);

    // The re-run follows the import the killed run started: no embedding, no second import.
    let o = run(&s3, d);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("started import 1") && stderr(&o).contains("following it"),
        "{}",
        stderr(&o)
    );
    let s = summary(d);
    assert_eq!(s["rows_embedded"], 0, "{s}");
    assert_eq!(s["rows_written"], 250, "{s}");
    assert_eq!(srv.imports("docs").len(), 1, "{:?}", srv.imports("docs"));
    assert_eq!(srv.records("docs", "backfill").len(), 250);
}

/// Kills the run in `d` while the import it started runs.
fn kill_during_import(s3: &S3Server, srv: &PineconeServer, d: &Path) {
    let e = env(s3);
    let pairs: Vec<(&str, Option<&str>)> = e.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let mut child = embedflow_command(d, &["run", "p.yaml", "--no-progress"], &pairs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while srv.imports("docs").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run started no import"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before its import started");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_ne!(srv.imports("docs")[0]["status"], "Completed");
}

#[test]
fn an_incremental_backfill_is_imported_then_later_runs_upsert_only_what_changed() {
    let s3 = S3Server::start();
    s3.bucket("imports");
    let srv = pinecone(&s3, Duration::from_millis(1500), 10_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 250);
    write_file(
        d,
        "p.yaml",
        &format!(
            "{}incremental:\n  state: state\n  deletes: true\n",
            yaml(&srv, "")
        ),
    );
    // Killed while the import runs; the re-run follows it and records the rows in the state.
    kill_during_import(&s3, &srv, d);
    let o = run(&s3, d);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("records the imported rows"),
        "{}",
        stderr(&o)
    );
    assert_eq!(summary(d)["rows_embedded"], 0);
    assert_eq!(srv.records("docs", "backfill").len(), 250);
    let before = srv.records("docs", "backfill");

    // The next night: two texts changed. Upserted, not imported; the rest untouched.
    corpus_edited(&d.join("docs.parquet"), 250, &[1, 2]);
    let upserts = srv.vectors_upserted("docs");
    let o = run(&s3, d);
    assert_ok(&o);
    let s = summary(d);
    assert_eq!(s["rows_embedded"], 2, "{s}");
    assert_eq!(s["incremental"]["changed"], 2, "{s}");
    assert_eq!(s["incremental"]["unchanged"], 248, "{s}");
    assert_eq!(srv.vectors_upserted("docs") - upserts, 2);
    assert_eq!(srv.imports("docs").len(), 1, "no second import");
    let after = srv.records("docs", "backfill");
    assert_eq!(after.len(), 250);
    assert_ne!(before["doc-0001"].values, after["doc-0001"].values);
    assert_eq!(before["doc-0003"].values, after["doc-0003"].values);

    // wait: false cannot record the state, and says so.
    write_file(
        d,
        "p.yaml",
        &format!(
            "{}incremental:\n  state: state2\n",
            yaml(&srv, "      wait: false\n")
        ),
    );
    assert_fails_with(&run(&s3, d), 2, "wait: false with incremental");
}

#[test]
fn an_import_left_running_is_awaited_later_and_a_failed_one_names_pinecones_error() {
    let s3 = S3Server::start();
    s3.bucket("imports");
    let srv = pinecone(&s3, Duration::from_millis(300), 10_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 250);
    write_file(d, "p.yaml", &yaml(&srv, "      wait: false\n"));

    // wait: false: the run starts the import and ends; `import wait` follows it to its end.
    let o = run(&s3, d);
    assert_ok(&o);
    let s = summary(d);
    assert!(
        s["output"]
            .as_str()
            .unwrap_or("")
            .contains("embedflow import wait 1"),
        "{s}"
    );
    assert_eq!(s["import_id"], "1", "{s}");
    let o = embedflow_s3(&s3, d, &["import", "wait", "1", "--pipeline", "p.yaml"]);
    assert_ok(&o);
    let status: Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(status["status"], "Completed", "{status}");
    assert_eq!(status["recordsImported"], 250, "{status}");
    let o = embedflow_s3(&s3, d, &["import", "status", "1", "--pipeline", "p.yaml"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("\"Completed\""), "{}", stdout(&o));
    assert_eq!(srv.records("docs", "backfill").len(), 250);

    // A file over the server's limit: the import fails, and the run says why, exit 1.
    let small = pinecone(&s3, Duration::ZERO, 2_000);
    let other = tempfile::tempdir().unwrap();
    let o2 = other.path();
    corpus(&o2.join("docs.parquet"), 50);
    write_file(
        o2,
        "p.yaml",
        &yaml(&small, "").replace("s3://imports/docs/", "s3://imports/small/"),
    );
    let o = run(&s3, o2);
    assert_fails_with(
        &o,
        1,
        "Pinecone import 1 failed: File small/backfill/part-00000.parquet is",
    );
    assert!(
        stderr(&o).contains("over the 2000 bytes a file may have"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn the_test_server_checks_the_layout_as_pinecone_does() {
    let s3 = S3Server::start();
    s3.bucket("imports");
    let srv = pinecone(&s3, Duration::ZERO, 10_000_000_000);
    let dir = tempfile::tempdir().unwrap();
    // A file with a column Pinecone does not take.
    let wrong = dir.path().join("wrong.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec!["a"])),
        Arc::new(StringArray::from(vec!["x"])),
    ];
    write_batch(&wrong, RecordBatch::try_new(schema, cols).unwrap());
    s3.put_file("imports", "bad/ns1/part-0.parquet", &wrong);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = srv.index_url("docs").unwrap();
    let describe = |id: &str| -> Value {
        rt.block_on(async {
            loop {
                let v: Value = reqwest::Client::new()
                    .get(format!("{base}/bulk/imports/{id}"))
                    .header("Api-Key", KEY)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                if v["status"] != "Pending" && v["status"] != "InProgress" {
                    return v;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let start = |uri: &str| -> Value {
        rt.block_on(async {
            reqwest::Client::new()
                .post(format!("{base}/bulk/imports"))
                .header("Api-Key", KEY)
                .json(&serde_json::json!({ "uri": uri }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    let id = start("s3://imports/bad/")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = describe(&id);
    assert_eq!(v["status"], "Failed", "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("unexpected column `text`"),
        "{v}"
    );
    let id = start("s3://imports/nothing-here/")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v = describe(&id);
    assert!(
        v["error"].as_str().unwrap().contains("No Parquet files"),
        "{v}"
    );
}

#[test]
fn an_import_carries_sparse_values_into_a_dotproduct_index() {
    let s3 = S3Server::start();
    s3.bucket("imports");
    let mut index = IndexConfig::new("docs", 384);
    index.metric = pinecone_test_server::Metric::Dotproduct;
    let mut config = ServerConfig::new(KEY, vec![index]);
    config.import_storage = Some(ImportStorage::new(&s3.endpoint, ACCESS_KEY, SECRET_KEY));
    let srv = PineconeServer::start(config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(&d.join("docs.parquet"), 120);
    let yaml = yaml(&srv, "").replace(
        "  id: id\n",
        "  id: id\n  sparse: { method: bm25, params: bm25.json }\n",
    );
    write_file(d, "p.yaml", &yaml);
    let o = run(&s3, d);
    assert_ok(&o);
    // The files hold Pinecone's sparse_values column beside id, values and metadata.
    let file = s3
        .object("imports", "docs/backfill/part-00000.parquet")
        .unwrap();
    let batches = read_batches(&file);
    let names: Vec<String> = batches[0]
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "values", "metadata", "sparse_values"]);
    let records = srv.records("docs", "backfill");
    assert_eq!(records.len(), 120);
    let params = embedflow::embed::bm25::Bm25Params::parse(
        "params",
        &std::fs::read(d.join("bm25.json")).unwrap(),
    )
    .unwrap();
    let bm25 = embedflow::embed::bm25::Bm25::new(params);
    let text = format!("note 3: the {} near the {}", WORDS[3], WORDS[0]);
    let want = bm25.encode_document(&text);
    let got = records["doc-0003"]
        .sparse
        .as_ref()
        .expect("sparse values imported");
    assert_eq!(got.indices, want.indices, "{text}");
}
