//! Delta Lake tables: real tables written by `deltalake-core` (the Rust Delta implementation),
//! read as sources at their latest or a given version (never their loose files), followed
//! through their change data feed by incremental runs (inserts, updates and deletes reach the
//! Pinecone test server's index), and written as the Parquet sink's output (one commit per run).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use crate::common::*;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use deltalake_core::DeltaTable;
use deltalake_core::protocol::SaveMode;
use pinecone_test_server::{IndexConfig, PineconeServer, ServerConfig};
use serde_json::Value;

const KEY: &str = "pc-test-key-delta";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn batch(rows: &[(&str, &str, &str)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
    ]));
    let col = |i: usize| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(
            |r| match i {
                0 => r.0,
                1 => r.1,
                _ => r.2,
            },
        )))
    };
    RecordBatch::try_new(schema, vec![col(0), col(1), col(2)]).unwrap()
}

fn url(dir: &Path) -> url::Url {
    std::fs::create_dir_all(dir).unwrap();
    url::Url::from_directory_path(std::fs::canonicalize(dir).unwrap()).unwrap()
}

async fn open(dir: &Path) -> DeltaTable {
    DeltaTable::try_from_url(url(dir)).await.unwrap()
}

/// Creates (or overwrites) a Delta table at `dir` with `rows`; `feed` turns its change data
/// feed on.
fn create_table(dir: &Path, rows: &[(&str, &str, &str)], feed: bool) {
    let rt = runtime();
    rt.block_on(async {
        let mut write = open(dir)
            .await
            .write(vec![batch(rows)])
            .with_save_mode(SaveMode::Overwrite);
        if feed {
            write = write.with_configuration([("delta.enableChangeDataFeed", Some("true"))]);
        }
        write.await.unwrap();
    });
}

fn append(dir: &Path, rows: &[(&str, &str, &str)]) {
    runtime().block_on(async {
        open(dir)
            .await
            .write(vec![batch(rows)])
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap();
    });
}

fn update(dir: &Path, predicate: &str, column: &str, value: &str) {
    runtime().block_on(async {
        open(dir)
            .await
            .update()
            .with_predicate(predicate)
            .with_update(column, value)
            .await
            .unwrap();
    });
}

fn delete(dir: &Path, predicate: &str) {
    runtime().block_on(async {
        open(dir)
            .await
            .delete()
            .with_predicate(predicate)
            .await
            .unwrap();
    });
}

fn version(dir: &Path) -> u64 {
    runtime().block_on(async { open(dir).await.version().unwrap() })
}

/// Every row of a Delta table (at its latest version), by id.
fn read_table(dir: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    read_rows(dir).into_iter().collect()
}

/// Every row of a Delta table (at its latest version): its id and its columns' values as text
/// (a vector as its bits).
fn read_rows(dir: &Path) -> Vec<(String, BTreeMap<String, String>)> {
    use datafusion::arrow::array::{Array, AsArray};
    runtime().block_on(async {
        let table = open(dir).await;
        let ctx = datafusion::prelude::SessionContext::new();
        table.update_datafusion_session(&ctx.state()).unwrap();
        let provider = table.table_provider().build().await.unwrap();
        let batches = ctx
            .read_table(Arc::new(provider))
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for b in batches {
            let ids =
                datafusion::arrow::compute::cast(b.column_by_name("id").unwrap(), &DataType::Utf8)
                    .unwrap();
            for i in 0..b.num_rows() {
                let mut row = BTreeMap::new();
                for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                    let value = match c.data_type() {
                        DataType::List(_) => {
                            let v = c.as_list::<i32>().value(i);
                            let v = v.as_primitive::<datafusion::arrow::datatypes::Float32Type>();
                            format!(
                                "{:?}",
                                v.values().iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                            )
                        }
                        _ => {
                            let t = datafusion::arrow::compute::cast(c, &DataType::Utf8).unwrap();
                            let t = t.as_string::<i32>();
                            if t.is_null(i) {
                                String::new()
                            } else {
                                t.value(i).to_string()
                            }
                        }
                    };
                    row.insert(f.name().clone(), value);
                }
                out.push((ids.as_string::<i32>().value(i).to_string(), row));
            }
        }
        out
    })
}

fn run(dir: &Path, yaml: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "run",
        yaml,
        "--no-progress",
        "--summary-json",
        "summary.json",
    ];
    args.extend(extra);
    embedflow_env(
        dir,
        &args,
        &[
            ("PINECONE_API_KEY", Some(KEY)),
            ("EMBEDFLOW_LOG", Some("embedflow=info,warn")),
        ],
    )
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn counts(s: &Value) -> [u64; 5] {
    let i = &s["incremental"];
    [
        &i["new"],
        &i["changed"],
        &i["metadata_only"],
        &i["unchanged"],
        &i["deleted"],
    ]
    .map(|v| v.as_u64().unwrap_or(u64::MAX))
}

const DAY1: [(&str, &str, &str); 8] = [
    ("a", "The river floods the valley every spring.", "en"),
    ("b", "A quiet library opens at nine.", "en"),
    ("c", "Der Zug fährt um acht Uhr ab.", "de"),
    ("d", "Fresh bread smells of the morning.", "en"),
    ("e", "The committee postponed the vote.", "en"),
    ("f", "Ein Hund schläft in der Sonne.", "de"),
    ("g", "Solar panels cover the old barn roof.", "en"),
    ("h", "The orchestra tuned before the concert.", "en"),
];

#[test]
fn a_delta_source_is_read_at_its_latest_or_a_given_version_never_as_loose_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_table(&d.join("docs"), &DAY1, false);
    delete(&d.join("docs"), "id = 'b' OR id = 'c'");
    assert_eq!(version(&d.join("docs")), 1);
    // The folder is found to be a Delta table; the deleted rows stay deleted.
    write_file(d, "p.yaml", &pipeline_yaml("docs", "out", ""));
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("read as a Delta table"),
        "{}",
        stderr(&o)
    );
    let ids: Vec<String> = read_vectors(&d.join("out/part-0.parquet"))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 6, "{ids:?}");
    assert!(!ids.contains(&"b".to_string()) && !ids.contains(&"c".to_string()));
    // An older version, named.
    write_file(
        d,
        "v0.yaml",
        &pipeline_yaml("docs, format: delta, version: 0", "out0", ""),
    );
    let o = run(d, "v0.yaml", &[]);
    assert_ok(&o);
    assert_eq!(read_vectors(&d.join("out0/part-0.parquet")).len(), 8);
    // A version that does not exist, and a folder that is not a Delta table.
    write_file(
        d,
        "v9.yaml",
        &pipeline_yaml("docs, format: delta, version: 9", "out9", ""),
    );
    assert_fails_with(&run(d, "v9.yaml", &[]), 1, "version 9");
    std::fs::create_dir_all(d.join("plain")).unwrap();
    write_text_parquet(&d.join("plain/x.parquet"), &["1"], &[Some("x")]);
    write_file(
        d,
        "plain.yaml",
        &pipeline_yaml("plain, format: delta", "outp", ""),
    );
    assert_fails_with(&run(d, "plain.yaml", &[]), 1, "is not a Delta table");
}

fn pinecone() -> PineconeServer {
    PineconeServer::start(ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)]))
        .expect("start the Pinecone test server")
}

fn pinecone_yaml(srv: &PineconeServer) -> String {
    format!(
        "source:\n  tables:\n    docs: {{ path: docs }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    api_key: ${{PINECONE_API_KEY}}\n    metadata: [lang]\nincremental:\n  state: state\n  deletes: true\n",
        srv.controller_url()
    )
}

#[test]
fn the_change_feed_brings_inserts_updates_and_deletes_to_the_index_without_reading_the_table() {
    let srv = pinecone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = d.join("docs");
    create_table(&table, &DAY1, true);
    write_file(d, "pc.yaml", &pinecone_yaml(&srv));
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    assert_eq!(counts(&summary(d)), [8, 0, 0, 0, 0]);
    let before = srv.records("docs", "");
    assert_eq!(before.len(), 8);

    // Day 2: two texts edited, one row's metadata changed, one row rewritten as it was, two
    // deleted, two added; over four commits.
    update(
        &table,
        "id = 'a' OR id = 'd'",
        "text",
        "'A new text for this row.'",
    );
    update(&table, "id = 'e'", "lang", "'fr'");
    update(&table, "id = 'g'", "text", "text");
    delete(&table, "id = 'c' OR id = 'h'");
    append(
        &table,
        &[
            ("i", "A lighthouse guides the ships home.", "en"),
            ("j", "Die Katze sitzt auf dem Dach.", "de"),
        ],
    );
    let to = version(&table);
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    let err = stderr(&o);
    assert!(
        err.contains("reading its change data feed, versions 1 to"),
        "{err}"
    );
    let s = summary(d);
    // Only what the feed names is classified: g (rewritten as it was) is unchanged, and so may
    // be rows the commits rewrote beside the ones they changed; not the whole table.
    let [new, changed, metadata, unchanged, deleted] = counts(&s);
    assert_eq!([new, changed, metadata, deleted], [2, 2, 1, 2], "{s}");
    assert!((1..=3).contains(&unchanged), "{s}");
    assert_eq!(s["rows_embedded"], 4, "{s}");
    assert_eq!(s["incremental"]["change_feed"]["since"], 0, "{s}");
    assert_eq!(s["incremental"]["change_feed"]["to"], to, "{s}");

    let after = srv.records("docs", "");
    let ids: Vec<&str> = after.keys().map(String::as_str).collect();
    assert_eq!(ids, ["a", "b", "d", "e", "f", "g", "i", "j"]);
    for id in ["b", "f", "g", "e"] {
        assert_eq!(
            before[id].values, after[id].values,
            "{id}: not embedded again"
        );
    }
    for id in ["a", "d"] {
        assert_ne!(before[id].values, after[id].values, "{id}: embedded again");
    }
    assert_eq!(after["e"].metadata.as_ref().unwrap()["lang"], "fr");

    // Nothing committed since: nothing read, nothing written.
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_eq!(counts(&s), [0, 0, 0, 0, 0], "{s}");
    assert_eq!(s["incremental"]["change_feed"]["since"], to, "{s}");
    assert_eq!(srv.records("docs", "").len(), 8);
}

#[test]
fn without_a_change_feed_every_row_is_fingerprinted_and_the_run_says_why() {
    let srv = pinecone();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = d.join("docs");
    create_table(&table, &DAY1, false);
    write_file(d, "pc.yaml", &pinecone_yaml(&srv));
    assert_ok(&run(d, "pc.yaml", &[]));
    update(&table, "id = 'a'", "text", "'Another text.'");
    delete(&table, "id = 'b'");
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("has no change data feed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(counts(&summary(d)), [0, 1, 0, 6, 1]);
    assert_eq!(srv.records("docs", "").len(), 7);
}

fn delta_output_yaml(out: &str, mode: &str) -> String {
    pipeline_yaml("docs.parquet", out, "").replace(
        &format!("parquet: {{ path: {out} }}"),
        &format!("parquet: {{ path: {out}, format: delta, mode: {mode} }}"),
    )
}

#[test]
fn a_delta_output_commits_one_version_per_run_overwriting_or_appending() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_text_parquet(
        &d.join("docs.parquet"),
        &["1", "2", "3"],
        &[Some("one text"), Some("two texts"), Some("three texts")],
    );
    write_file(d, "over.yaml", &delta_output_yaml("lake", "overwrite"));
    for _ in 0..2 {
        let o = run(d, "over.yaml", &[]);
        assert_ok(&o);
    }
    assert_eq!(version(&d.join("lake")), 1);
    let rows = read_table(&d.join("lake"));
    assert_eq!(rows.keys().collect::<Vec<_>>(), ["1", "2", "3"]);
    // The vectors are the Parquet output's, bit for bit.
    write_file(d, "plain.yaml", &pipeline_yaml("docs.parquet", "plain", ""));
    assert_ok(&run(d, "plain.yaml", &[]));
    for (id, v) in read_vectors(&d.join("plain/part-0.parquet")) {
        let bits: Vec<u32> = v.iter().map(|x| x.to_bits()).collect();
        assert_eq!(rows[&id]["vector"], format!("{bits:?}"), "{id}");
    }
    // `query` reads the table's current version.
    let o = embedflow(d, &["query", "over.yaml", "three texts", "-k", "1"]);
    assert_ok(&o);
    assert!(stdout(&o).contains("three texts"), "{}", stdout(&o));

    write_file(d, "app.yaml", &delta_output_yaml("lake", "append"));
    assert_ok(&run(d, "app.yaml", &[]));
    assert_eq!(version(&d.join("lake")), 2);
    assert_eq!(read_rows(&d.join("lake")).len(), 6, "appended");

    // Refused: appending with incremental, --shard.
    write_file(
        d,
        "inc.yaml",
        &format!(
            "{}incremental:\n  state: state\n",
            delta_output_yaml("lake", "append")
        ),
    );
    assert_fails_with(
        &run(d, "inc.yaml", &[]),
        2,
        "append cannot be used with incremental",
    );
    assert_fails_with(&run(d, "over.yaml", &["--shard", "0/2"]), 2, "--shard 0/2");
}

#[test]
fn an_incremental_run_over_a_delta_output_carries_vectors_into_the_next_version() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = d.join("docs");
    create_table(&table, &DAY1, true);
    let yaml = format!(
        "{}incremental:\n  state: state\n  deletes: true\n",
        pipeline_yaml("docs", "lake", "").replace(
            "parquet: { path: lake }",
            "parquet: { path: lake, format: delta }"
        )
    );
    write_file(d, "p.yaml", &yaml);
    assert_ok(&run(d, "p.yaml", &[]));
    let before = read_table(&d.join("lake"));
    assert_eq!(before.len(), 8);
    update(&table, "id = 'a'", "text", "'A changed text.'");
    delete(&table, "id = 'b'");
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    assert_eq!(counts(&summary(d)), [0, 1, 0, 0, 1]);
    let after = read_table(&d.join("lake"));
    assert_eq!(after.len(), 7);
    assert_ne!(before["a"]["vector"], after["a"]["vector"]);
    for id in ["c", "d", "e", "f", "g", "h"] {
        assert_eq!(before[id], after[id], "{id} carried over");
    }
}

#[test]
fn a_delta_table_on_s3_is_read_and_written() {
    let s3 = crate::common::s3::S3Server::start();
    let bucket = s3.bucket("lake");
    create_table(&bucket.join("docs"), &DAY1, false);
    delete(&bucket.join("docs"), "id = 'a'");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let yaml = pipeline_yaml("s3://lake/docs", "s3://lake/vectors", "").replace(
        "parquet: { path: s3://lake/vectors }",
        "parquet: { path: s3://lake/vectors, format: delta }",
    );
    write_file(d, "p.yaml", &yaml);
    let env: Vec<(&str, String)> = s3.env();
    let env: Vec<(&str, Option<&str>)> = env.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let o = embedflow_env(d, &["run", "p.yaml", "--no-progress"], &env);
    assert_ok(&o);
    let rows = read_table(&bucket.join("vectors"));
    assert_eq!(rows.len(), 7);
    assert!(!rows.contains_key("a"));
}

#[test]
fn a_cluster_run_refuses_delta_tables_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_text_parquet(&d.join("docs.parquet"), &["1"], &[Some("one")]);
    write_file(d, "p.yaml", &delta_output_yaml("lake", "overwrite"));
    let o = embedflow(d, &["run", "p.yaml", "--cluster", "df://127.0.0.1:9"]);
    assert_fails_with(&o, 2, "format: delta on a cluster");
    create_table(&d.join("docs"), &DAY1[..2], false);
    write_file(d, "src.yaml", &pipeline_yaml("docs", "out", ""));
    let o = embedflow(d, &["run", "src.yaml", "--cluster", "df://127.0.0.1:9"]);
    assert_fails_with(&o, 2, "table `docs` is a Delta table");
}

#[test]
fn given_vectors_from_a_delta_table_are_read_as_fixed_size_vectors() {
    use datafusion::arrow::array::ListArray;
    use datafusion::arrow::datatypes::Float32Type;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vectors = [[0.5f32, 1.0, -2.0], [3.0, 0.25, 4.0]];
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::List(Arc::new(Field::new_list_field(DataType::Float32, true))),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["p", "q"])),
            Arc::new(ListArray::from_iter_primitive::<Float32Type, _, _>(
                vectors.iter().map(|v| Some(v.iter().map(|x| Some(*x)))),
            )),
        ],
    )
    .unwrap();
    runtime().block_on(async {
        open(&d.join("vecs"))
            .await
            .write(vec![batch])
            .await
            .unwrap();
    });
    write_file(
        d,
        "p.yaml",
        "source:\n  tables:\n    v: { path: vecs }\nembed:\n  vector: vector\n  id: id\nsink:\n  parquet: { path: out }\n",
    );
    assert_ok(&run(d, "p.yaml", &[]));
    let got: BTreeMap<String, Vec<f32>> = read_vectors(&d.join("out/part-0.parquet"))
        .into_iter()
        .collect();
    assert_eq!(got["p"], vectors[0]);
    assert_eq!(got["q"], vectors[1]);
}
