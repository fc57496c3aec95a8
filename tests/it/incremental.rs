//! Incremental runs: only what changed is embedded, metadata-only changes are updated in place,
//! vanished ids are deleted, unchanged vectors stay bit for bit, and a run killed at any moment
//! resumes with every id exactly once. Against local Parquet, S3 and the project's Pinecone
//! server with faults.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use pinecone_test_server::{Faults, IndexConfig, PineconeServer, ServerConfig};
use serde_json::Value;

const KEY: &str = "pc-test-key-incremental";

/// One source row: id, text, lang, year.
#[derive(Clone)]
struct Row {
    id: String,
    text: String,
    lang: String,
    year: i64,
}

fn rows(n: usize) -> Vec<Row> {
    (0..n)
        .map(|i| Row {
            id: format!("doc-{i:05}"),
            text: format!(
                "note {i}: the {} near the {} needs a {}",
                WORDS[i % 12],
                WORDS[(i / 12) % 12],
                WORDS[(i / 144) % 12]
            ),
            lang: if i % 3 == 0 { "de" } else { "en" }.into(),
            year: 2000 + (i % 25) as i64,
        })
        .collect()
}

fn write_rows(path: &Path, rows: &[Row]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("lang", DataType::Utf8, false),
        Field::new("year", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.id.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.text.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.lang.as_str()),
        )),
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.year))),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

/// The second day of a 1,000-row table: 3 texts edited, 2 rows deleted, 5 added, 4 with only
/// their metadata changed. Returns the rows and the ids of each kind.
struct Day2 {
    rows: Vec<Row>,
    edited: Vec<String>,
    deleted: Vec<String>,
    added: Vec<String>,
    metadata: Vec<String>,
}

fn day2(day1: &[Row]) -> Day2 {
    let id = |i: usize| format!("doc-{i:05}");
    let edited: Vec<String> = [10, 20, 30].map(id).to_vec();
    let deleted: Vec<String> = [40, 50].map(id).to_vec();
    let metadata: Vec<String> = [60, 70, 80, 90].map(id).to_vec();
    let mut rows: Vec<Row> = day1
        .iter()
        .filter(|r| !deleted.contains(&r.id))
        .cloned()
        .map(|mut r| {
            if edited.contains(&r.id) {
                r.text = format!("{} (revised: the {} moved)", r.text, WORDS[3]);
            }
            if metadata.contains(&r.id) {
                r.lang = "fr".into();
                r.year += 1;
            }
            r
        })
        .collect();
    let added: Vec<String> = (0..5).map(|k| format!("new-{k}")).collect();
    for (k, a) in added.iter().enumerate() {
        rows.push(Row {
            id: a.clone(),
            text: format!(
                "a new note {k} about the {} and its {}",
                WORDS[k],
                WORDS[k + 5]
            ),
            lang: "en".into(),
            year: 2026,
        });
    }
    Day2 {
        rows,
        edited,
        deleted,
        added,
        metadata,
    }
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
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
            ("EMBEDFLOW_LOG", Some("info")),
        ],
    )
}

/// Asserts the incremental counts of the last summary.
fn assert_counts(s: &Value, new: u64, changed: u64, metadata: u64, unchanged: u64, deleted: u64) {
    let i = &s["incremental"];
    let got = [
        &i["new"],
        &i["changed"],
        &i["metadata_only"],
        &i["unchanged"],
        &i["deleted"],
    ]
    .map(|v| v.as_u64().unwrap_or(u64::MAX));
    assert_eq!(
        got,
        [new, changed, metadata, unchanged, deleted],
        "new, changed, metadata-only, unchanged, deleted: {s}"
    );
}

/// id -> (vector, lang) of a Parquet output; an id twice is a failure.
fn read_output(path: &Path) -> BTreeMap<String, (Vec<f32>, String)> {
    let langs = read_text_column(path, "lang");
    let mut out = BTreeMap::new();
    for ((id, vector), lang) in read_vectors(path).into_iter().zip(langs) {
        let previous = out.insert(id.clone(), (vector, lang));
        assert!(previous.is_none(), "{id} twice in the output");
    }
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn parquet_yaml(extra: &str) -> String {
    format!(
        "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: {{ path: out }}\nincremental:\n  state: state\n{extra}"
    )
}

#[test]
fn a_parquet_run_embeds_only_what_changed_and_carries_the_rest_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day1 = rows(1000);
    write_rows(&d.join("docs.parquet"), &day1);
    write_file(d, "p.yaml", &parquet_yaml("  deletes: true\n"));

    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 1000, 0, 0, 0, 0);
    assert_eq!(s["rows_embedded"], 1000, "{s}");
    let before = read_output(&d.join("out/part-0.parquet"));
    assert_eq!(before.len(), 1000);

    let next = day2(&day1);
    write_rows(&d.join("docs.parquet"), &next.rows);
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 5, 3, 4, 991, 2);
    assert_eq!(
        s["rows_embedded"], 8,
        "exactly the new and edited rows: {s}"
    );
    assert_eq!(s["rows_written"], 1003, "{s}");
    assert!(
        stdout(&o).contains("5 new, 3 changed, 4 metadata-only, 991 unchanged, 2 deleted"),
        "{}",
        stdout(&o)
    );

    let after = read_output(&d.join("out/part-0.parquet"));
    assert_eq!(after.len(), 1003);
    for id in &next.deleted {
        assert!(!after.contains_key(id), "{id} was deleted from the source");
    }
    for id in &next.added {
        assert!(after.contains_key(id), "{id} was added");
    }
    for (id, (vector, lang)) in &before {
        let Some((now, now_lang)) = after.get(id) else {
            continue;
        };
        if next.edited.contains(id) {
            assert_ne!(bits(vector), bits(now), "{id} was edited: a new vector");
        } else {
            assert_eq!(
                bits(vector),
                bits(now),
                "{id}: the vector is carried bit for bit"
            );
        }
        if next.metadata.contains(id) {
            assert_eq!(now_lang, "fr", "{id}: the new metadata");
        } else {
            assert_eq!(now_lang, lang, "{id}");
        }
    }

    // Nothing changed: nothing is embedded, and the output is the same.
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 0, 0, 0, 1003, 0);
    assert_eq!(s["rows_embedded"], 0, "{s}");
    let again = read_output(&d.join("out/part-0.parquet"));
    assert_eq!(again.len(), 1003);
    for (id, (v, _)) in &after {
        assert_eq!(bits(v), bits(&again[id].0), "{id}");
    }

    // --full embeds everything again, to the same vectors.
    let o = run(d, "p.yaml", &["--full"]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 1003, 0, 0, 0, 0);
    assert_eq!(s["rows_embedded"], 1003, "{s}");
    let full = read_output(&d.join("out/part-0.parquet"));
    for (id, (v, _)) in &after {
        let worst = v
            .iter()
            .zip(&full[id].0)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "{id}: {worst}");
    }
}

/// A memory limit the day-2 run's sorts (the carry-over sorts the previous output, vectors
/// included: about 19 MB here) do not fit in: two partitions of 64 MiB each, whatever the
/// machine's cores, so they spill to disk, and the run gives the output an unlimited run gives.
const SPILLING_LIMIT: &str = "128MiB";

#[test]
fn a_memory_limited_run_spills_and_a_limit_too_small_fails_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 12,000 rows, more than one record batch (a sort of one batch does not spill); each text
    // its id (a few word pieces): what spills is the previous output's vectors, whatever the
    // texts' length.
    let mut day1 = rows(12000);
    for r in &mut day1 {
        r.text = r.id.clone();
    }
    write_rows(&d.join("docs.parquet"), &day1);
    write_file(d, "p.yaml", &parquet_yaml("  deletes: true\n"));
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    let before = read_output(&d.join("out/part-0.parquet"));

    // Day 2 under the limit: the sorts over 12,000 rows spill, and the result is exact.
    let next = day2(&day1);
    write_rows(&d.join("docs.parquet"), &next.rows);
    let o = run(d, "p.yaml", &["--memory-limit", SPILLING_LIMIT]);
    assert_ok(&o);
    let s = summary(d);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert!(
            s["spill_files"].as_u64().unwrap_or(0) > 0,
            "under {SPILLING_LIMIT} the sorts spill: {s}"
        );
        assert!(stdout(&o).contains("spilled to disk"), "{}", stdout(&o));
    } else {
        eprintln!("one core: one partition holds the sorts in {SPILLING_LIMIT}, nothing spills");
    }
    assert_counts(&s, 5, 3, 4, 11991, 2);
    assert_eq!(s["rows_embedded"], 8, "{s}");
    let after = read_output(&d.join("out/part-0.parquet"));
    assert_eq!(after.len(), 12003);
    for (id, (vector, _)) in &before {
        match after.get(id) {
            None => assert!(next.deleted.contains(id), "{id} is missing"),
            Some((now, _)) if next.edited.contains(id) => {
                assert_ne!(bits(vector), bits(now), "{id} was edited")
            }
            Some((now, _)) => assert_eq!(bits(vector), bits(now), "{id}: carried bit for bit"),
        }
    }

    // A limit nothing fits in: a clear error naming the setting, exit 1, the output untouched.
    let o = run(d, "p.yaml", &["--memory-limit", "1KiB", "--full"]);
    assert_fails_with(&o, 1, "--memory-limit");
    assert!(stderr(&o).contains("memory limit 1.0 kB"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    let untouched = read_output(&d.join("out/part-0.parquet"));
    assert_eq!(untouched.len(), 12003);
    for (id, (v, _)) in &after {
        assert_eq!(bits(v), bits(&untouched[id].0), "{id}");
    }
}

#[test]
fn without_deletes_rows_missing_from_the_source_stay_in_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day1 = rows(40);
    write_rows(&d.join("docs.parquet"), &day1);
    write_file(d, "p.yaml", &parquet_yaml(""));
    assert_ok(&run(d, "p.yaml", &[]));
    // Today's partition holds only two rows: one edited, one new.
    let mut today = vec![day1[3].clone()];
    today[0].text.push_str(" (edited)");
    today.push(Row {
        id: "new-0".into(),
        text: "a row of today".into(),
        lang: "en".into(),
        year: 2026,
    });
    write_rows(&d.join("docs.parquet"), &today);
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 1, 1, 0, 0, 0);
    assert_eq!(s["rows_embedded"], 2, "{s}");
    let out = read_output(&d.join("out/part-0.parquet"));
    assert_eq!(out.len(), 41, "yesterday's rows stay, today's are added");
}

/// A model folder that is the default model with another tokenizer.json (same tokens, other
/// bytes): a different model as far as fingerprints go.
fn other_model(dir: &Path) -> std::path::PathBuf {
    let src = embedflow::embed::model::model_cache_dir().join("all-MiniLM-L6-v2");
    let dst = dir.join("other-model");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_name() == "tokenizer.json" {
            let mut text = std::fs::read_to_string(entry.path()).unwrap();
            text.push('\n');
            std::fs::write(target, text).unwrap();
        } else {
            std::os::unix::fs::symlink(entry.path(), target).unwrap();
        }
    }
    dst
}

#[test]
fn a_model_change_embeds_every_row_again_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_rows(&d.join("docs.parquet"), &rows(30));
    write_file(d, "p.yaml", &parquet_yaml("  deletes: true\n"));
    assert_ok(&run(d, "p.yaml", &[]));
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    assert_eq!(summary(d)["rows_embedded"], 0);

    let model = other_model(d);
    let yaml =
        parquet_yaml("  deletes: true\n").replace("all-MiniLM-L6-v2", &model.display().to_string());
    write_file(d, "other.yaml", &yaml);
    let o = run(d, "other.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 0, 30, 0, 0, 0);
    assert_eq!(s["rows_embedded"], 30, "{s}");
    let err = stderr(&o);
    assert!(
        err.contains("embedding settings changed") && err.contains("tokenizer.json changed"),
        "{err}"
    );
    // The same settings again: nothing to do.
    assert_ok(&run(d, "other.yaml", &[]));
    assert_eq!(summary(d)["rows_embedded"], 0);
}

#[test]
fn a_parquet_output_and_its_state_on_s3() {
    use crate::common::s3::*;
    let srv = S3Server::start();
    let bucket = srv.bucket("lake");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day1 = rows(50);
    write_rows(&d.join("docs.parquet"), &day1);
    let yaml = parquet_yaml("  deletes: true\n")
        .replace("path: out", "path: s3://lake/vectors")
        .replace("state: state", "state: s3://lake/state/docs");
    write_file(d, "s3.yaml", &yaml);
    let env = srv.env();
    let env: Vec<(&str, Option<&str>)> = env
        .iter()
        .map(|(k, v)| (*k, Some(v.as_str())))
        .chain([("EMBEDFLOW_LOG", Some("info"))])
        .collect();
    let args = [
        "run",
        "s3.yaml",
        "--no-progress",
        "--summary-json",
        "summary.json",
    ];
    assert_ok(&embedflow_env(d, &args, &env));
    let before = read_output(&bucket.join("vectors/part-0.parquet"));
    let mut next = day1.clone();
    next[7].text.push_str(" (edited)");
    next.remove(9);
    write_rows(&d.join("docs.parquet"), &next);
    let o = embedflow_env(d, &args, &env);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 0, 1, 0, 48, 1);
    assert_eq!(s["rows_embedded"], 1, "{s}");
    let after = read_output(&bucket.join("vectors/part-0.parquet"));
    assert_eq!(after.len(), 49);
    assert_eq!(bits(&before["doc-00001"].0), bits(&after["doc-00001"].0));
    let names = srv.keys("lake");
    assert!(
        names.iter().any(|n| n == "state/docs/manifest.json"),
        "{names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("state/docs/base-")),
        "{names:?}"
    );
    assert!(
        !names.iter().any(|n| n.ends_with("lock")),
        "the locks are released: {names:?}"
    );
}

fn pinecone(faults: Faults) -> PineconeServer {
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)]);
    config.faults = faults;
    PineconeServer::start(config).expect("start the Pinecone test server")
}

fn pinecone_yaml(srv: &PineconeServer, sink_extra: &str, incremental_extra: &str) -> String {
    format!(
        "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    api_key: ${{PINECONE_API_KEY}}\n    metadata: [lang, year]\n{sink_extra}incremental:\n  state: state\n  deletes: true\n{incremental_extra}",
        srv.controller_url()
    )
}

fn faults() -> Faults {
    Faults {
        rate_429: 0.08,
        rate_503: 0.05,
        rate_drop: 0.02,
        retry_after_secs: Some(1),
        ..Default::default()
    }
}

#[test]
fn a_pinecone_run_with_faults_embeds_8_updates_4_deletes_2_and_leaves_the_rest() {
    let srv = pinecone(faults());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day1 = rows(1000);
    write_rows(&d.join("docs.parquet"), &day1);
    write_file(
        d,
        "pc.yaml",
        &pinecone_yaml(&srv, "    batch_size: 100\n    max_retries: 12\n", ""),
    );
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    assert_counts(&summary(d), 1000, 0, 0, 0, 0);
    let before = srv.records("docs", "");
    assert_eq!(before.len(), 1000);

    let next = day2(&day1);
    write_rows(&d.join("docs.parquet"), &next.rows);
    let sent = srv.vectors_upserted("docs");
    let drops = srv.fault_counts().dropped;
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 5, 3, 4, 991, 2);
    assert_eq!(s["rows_embedded"], 8, "{s}");
    let upserted = srv.vectors_upserted("docs") - sent;
    let new_drops = srv.fault_counts().dropped - drops;
    assert!(
        (8..=8 * (1 + new_drops)).contains(&upserted),
        "{upserted} vectors upserted for 8 rows ({new_drops} dropped connections)"
    );

    let after = srv.records("docs", "");
    assert_eq!(after.len(), 1003, "1000 - 2 + 5");
    for id in &next.deleted {
        assert!(!after.contains_key(id), "{id} deleted");
    }
    for (id, record) in &before {
        let Some(now) = after.get(id) else { continue };
        if next.edited.contains(id) {
            assert_ne!(bits(&record.values), bits(&now.values), "{id} re-embedded");
            continue;
        }
        assert_eq!(
            bits(&record.values),
            bits(&now.values),
            "{id}: untouched vector"
        );
        let lang = now.metadata.as_ref().unwrap()["lang"].as_str().unwrap();
        if next.metadata.contains(id) {
            assert_eq!(lang, "fr", "{id}: metadata updated in place");
            let year = now.metadata.as_ref().unwrap()["year"].as_f64().unwrap();
            let was = record.metadata.as_ref().unwrap()["year"].as_f64().unwrap();
            assert_eq!(year, was + 1.0, "{id}");
        } else {
            assert_eq!(now.metadata, record.metadata, "{id}");
        }
    }
}

#[test]
fn chunks_that_no_longer_exist_are_deleted_and_chunk_ids_are_stable() {
    let srv = pinecone(Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = (0..12)
        .map(|i| {
            format!(
                "Sentence {i} tells of the {} by the {}.",
                WORDS[i % 12],
                WORDS[(i + 5) % 12]
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut docs = rows(3);
    docs[0].text = long.clone();
    write_rows(&d.join("docs.parquet"), &docs);
    let yaml = pinecone_yaml(&srv, "", "").replace(
        "  id: id\n",
        "  id: id\n  chunking: { max_tokens: 24, overlap: 4 }\n",
    );
    write_file(d, "pc.yaml", &yaml);
    assert_ok(&run(d, "pc.yaml", &[]));
    let first = srv.records("docs", "");
    let long_chunks: Vec<&String> = first
        .keys()
        .filter(|k| k.starts_with("doc-00000#"))
        .collect();
    assert!(long_chunks.len() >= 4, "{:?}", first.keys());

    // Unchanged: nothing is embedded; --full gives the same chunk ids and texts.
    assert_ok(&run(d, "pc.yaml", &[]));
    assert_eq!(summary(d)["rows_embedded"], 0);
    assert_ok(&run(d, "pc.yaml", &["--full"]));
    let again = srv.records("docs", "");
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        again.keys().collect::<Vec<_>>()
    );
    for (id, r) in &first {
        assert_eq!(
            r.metadata.as_ref().unwrap().get("text"),
            again[id].metadata.as_ref().unwrap().get("text"),
            "{id}"
        );
    }

    // The long text becomes short: its chunks past the first are deleted.
    docs[0].text = "Now it is short.".into();
    write_rows(&d.join("docs.parquet"), &docs);
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 0, 1, 0, 2, 0);
    assert_eq!(s["rows_embedded"], 1, "one chunk: {s}");
    let now = srv.records("docs", "");
    let ids: Vec<&String> = now.keys().filter(|k| k.starts_with("doc-00000")).collect();
    assert_eq!(ids, vec!["doc-00000#0"], "{:?}", now.keys());
    assert_eq!(now.len(), 3);
}

#[test]
fn a_pinecone_run_killed_at_a_random_moment_resumes_with_every_id_once() {
    // Uploads are paced by the server (150 ms a request of 20, two at a time: about 270
    // vectors/s whatever the machine's speed), so 1,000 rows outlast the first checkpoint (1 s)
    // and the kill (up to 1 s after it).
    let n = 1000;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = rows(n);
    write_rows(&d.join("docs.parquet"), &rows);

    // The vectors a clean run computes.
    write_file(d, "clean.yaml", &pipeline_yaml("docs.parquet", "clean", ""));
    assert_ok(&embedflow(d, &["run", "clean.yaml", "--no-progress"]));
    let clean: BTreeMap<String, Vec<f32>> = read_vectors(&d.join("clean/part-0.parquet"))
        .into_iter()
        .collect();

    let srv = pinecone(Faults {
        latency: Duration::from_millis(150),
        ..faults()
    });
    write_file(
        d,
        "pc.yaml",
        &pinecone_yaml(
            &srv,
            "    batch_size: 20\n    concurrency: 2\n    max_retries: 12\n",
            "  checkpoint_secs: 1\n",
        ),
    );
    let mut first = embedflow_command(
        d,
        &["run", "pc.yaml", "--no-progress"],
        &[("PINECONE_API_KEY", Some(KEY))],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Wait for the first checkpoint, then kill -9 a random moment later.
    let start = Instant::now();
    let checkpointed = || {
        std::fs::read_dir(d.join("state"))
            .map(|r| {
                r.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("delta-"))
            })
            .unwrap_or(false)
    };
    while !checkpointed() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint was written"
        );
        if first.try_wait().unwrap().is_some() {
            let out = first.wait_with_output().unwrap();
            panic!(
                "the run ended before its first checkpoint: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // While it runs, a second run of the same pipeline is refused, naming the first.
    let second = run(d, "pc.yaml", &[]);
    assert_fails_with(&second, 1, "another embedflow run");
    assert!(
        stderr(&second).contains(&format!("pid {}", first.id())),
        "{}",
        stderr(&second)
    );
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    std::thread::sleep(Duration::from_millis(u64::from(nanos % 1000)));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let landed = srv.records("docs", "").len();
    assert!(landed < n, "the run finished before it was killed");

    // The re-run takes over the dead run's lock, embeds only what was not checkpointed, and
    // the index ends with every id once, with the vectors of a clean run.
    let o = run(d, "pc.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    let new = s["incremental"]["new"].as_u64().unwrap();
    let unchanged = s["incremental"]["unchanged"].as_u64().unwrap();
    assert_eq!(new + unchanged, n as u64, "{s}");
    assert!(unchanged > 0, "nothing was resumed: {s}");
    assert_eq!(s["rows_embedded"].as_u64().unwrap(), new, "{s}");
    let stored = srv.records("docs", "");
    assert_eq!(stored.len(), n, "every id, once");
    let mut worst = 0f32;
    for (id, want) in &clean {
        let got = &stored
            .get(id)
            .unwrap_or_else(|| panic!("{id} missing"))
            .values;
        for (a, b) in got.iter().zip(want) {
            worst = worst.max((a - b).abs());
        }
    }
    assert!(worst < 1e-5, "largest difference from a clean run: {worst}");
}

#[test]
fn a_damaged_state_names_its_file_and_the_way_out_and_a_lost_manifest_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day1 = rows(30);
    write_rows(&d.join("docs.parquet"), &day1);
    write_file(d, "p.yaml", &parquet_yaml(""));
    assert_ok(&run(d, "p.yaml", &[]));
    let state_files = |d: &Path| parquet_names(&d.join("state"));
    let files = state_files(d);
    assert!(!files.is_empty(), "the state has files");
    // A truncated state file: the error names it and --full; the output stays as it was.
    let victim = d.join("state").join(&files[0]);
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let before = std::fs::read(d.join("out/part-0.parquet")).unwrap();
    let o = run(d, "p.yaml", &[]);
    assert_fails_with(
        &o,
        1,
        &format!("the state file state/{} is unreadable", files[0]),
    );
    assert!(stderr(&o).contains("re-run with --full"), "{}", stderr(&o));
    assert_eq!(std::fs::read(d.join("out/part-0.parquet")).unwrap(), before);
    // --full is the way out.
    let o = run(d, "p.yaml", &["--full"]);
    assert_ok(&o);
    assert_eq!(summary(d)["rows_embedded"], 30);
    // A lost manifest: the state starts over, says which files no manifest names, and removes
    // them; the next run embeds only what changed again.
    std::fs::remove_file(d.join("state/manifest.json")).unwrap();
    let orphans = state_files(d);
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("holds") && stderr(&o).contains(&orphans[0]),
        "{}",
        stderr(&o)
    );
    assert_eq!(summary(d)["rows_embedded"], 30, "every row again");
    assert_ok(&run(d, "p.yaml", &[]));
    assert_eq!(summary(d)["rows_embedded"], 0, "the new state holds");
    assert_eq!(read_output(&d.join("out/part-0.parquet")).len(), 30);
}

#[test]
fn an_insert_into_an_incremental_pipelines_sink_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_rows(&d.join("docs.parquet"), &rows(10));
    write_file(d, "p.yaml", &parquet_yaml(""));
    assert_ok(&run(d, "p.yaml", &[]));
    let before = std::fs::read(d.join("out/part-0.parquet")).unwrap();
    let o = embedflow(
        d,
        &[
            "sql",
            "--pipeline",
            "p.yaml",
            "--allow-writes",
            "INSERT INTO sink (id, vector) SELECT id, embed(text) FROM docs",
        ],
    );
    assert_fails_with(&o, 2, "refused for an incremental pipeline");
    assert_eq!(
        std::fs::read(d.join("out/part-0.parquet")).unwrap(),
        before,
        "the output its state describes is as it was"
    );
}

/// `id`, `vector` (4 floats) and `lang` rows.
fn write_vector_rows(path: &Path, rows: &[(String, [f32; 4], &str)]) {
    use datafusion::arrow::array::FixedSizeListArray;
    use datafusion::arrow::datatypes::Float32Type;
    let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
        rows.iter()
            .map(|(_, v, _)| Some(v.iter().map(|x| Some(*x)))),
        4,
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "vector",
            datafusion::arrow::array::Array::data_type(&vectors).clone(),
            true,
        ),
        Field::new("lang", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.as_str()),
        )),
        Arc::new(vectors),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

#[test]
fn a_pipeline_of_given_vectors_runs_incrementally_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let day1: Vec<(String, [f32; 4], &str)> = (0..200)
        .map(|i| (format!("v-{i:03}"), [i as f32, 1.0, 2.0, 3.0], "en"))
        .collect();
    write_vector_rows(&d.join("vectors.parquet"), &day1);
    write_file(
        d,
        "p.yaml",
        "source:\n  tables:\n    v: { path: vectors.parquet }\nembed:\n  vector: vector\n  id: id\nsink:\n  parquet: { path: out }\nincremental:\n  state: state\n  deletes: true\n",
    );
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    assert_counts(&summary(d), 200, 0, 0, 0, 0);
    assert!(
        !stderr(&o).contains("loaded from"),
        "no model is loaded: {}",
        stderr(&o)
    );

    // Day 2: two vectors changed, one row's metadata changed, one row gone, one new.
    let mut day2 = day1.clone();
    day2[5].1[1] = 9.0;
    day2[6].1[2] = 9.0;
    day2[7].2 = "de";
    day2.remove(8);
    day2.push(("v-new".into(), [7.0, 7.0, 7.0, 7.0], "fr"));
    write_vector_rows(&d.join("vectors.parquet"), &day2);
    let o = run(d, "p.yaml", &[]);
    assert_ok(&o);
    let s = summary(d);
    assert_counts(&s, 1, 2, 1, 196, 1);
    assert_eq!(s["rows_embedded"], 3, "the new and changed vectors: {s}");
    let out = read_vectors(&d.join("out/part-0.parquet"));
    assert_eq!(out.len(), 200);
    let got: BTreeMap<String, Vec<f32>> = out.into_iter().collect();
    for (id, v, _) in &day2 {
        assert_eq!(&got[id], &v.to_vec(), "{id}");
    }
    let langs = read_text_column(&d.join("out/part-0.parquet"), "lang");
    assert!(langs.iter().any(|l| l == "de") && langs.iter().any(|l| l == "fr"));
}
