//! Sources and outputs on S3, against a real S3 server (s3s-fs, in this process, checking
//! signatures): same vectors as local runs, Hive partitions, atomic multipart output, and a clear
//! error for each way S3 access goes wrong.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::Arc;

use crate::common::s3::{S3Server, SECRET_KEY};
use crate::common::*;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};

/// Runs embedflow with the server's AWS environment, changed by `env` (a `None` removes).
fn tmp_lock(body: &str) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), body).unwrap();
    f
}

fn run_s3(srv: &S3Server, cwd: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    let server_env = srv.env();
    let mut all: Vec<(&str, Option<&str>)> = server_env
        .iter()
        .map(|(k, v)| (*k, Some(v.as_str())))
        .collect();
    all.extend_from_slice(env);
    embedflow_env(cwd, args, &all)
}

fn vectors_by_id(path: &Path) -> BTreeMap<String, Vec<f32>> {
    read_vectors(path).into_iter().collect()
}

#[test]
fn quickstart_reading_and_writing_s3_gives_the_local_vectors() {
    let srv = S3Server::start();
    srv.bucket("lake");
    let out = tempfile::tempdir().unwrap();
    // A tenth of the sample (311 rows), with shorter inputs, keeps the test quick: S3 reads
    // and writes the same bytes whatever their volume. Both runs use the same settings.
    let (subset, rows) = sample_subset(out.path(), 10);
    srv.put_file("lake", "books/sample.parquet", Path::new(&subset));
    let local_out = out.path().join("local");
    let common = ["--set", "embed.max_seq_length=48", "--no-progress"];
    let local_set = format!("sink.parquet.path={}", local_out.display());
    let local_source = format!("source.tables.docs.path={subset}");
    let mut args = vec![
        "run",
        "pipelines/quickstart.yaml",
        "--set",
        &local_set,
        "--set",
        &local_source,
    ];
    args.extend(common);
    assert_ok(&run_s3(&srv, &crate::common::repo_dir(), &args, &[]));

    let mut args = vec![
        "run",
        "pipelines/quickstart.yaml",
        "--set",
        "source.tables.docs.path=s3://lake/books/",
        "--set",
        "sink.parquet.path=s3://lake/vectors/quickstart",
    ];
    args.extend(common);
    let o = run_s3(&srv, &crate::common::repo_dir(), &args, &[]);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("s3://lake/vectors/quickstart/part-0.parquet"),
        "{}",
        stdout(&o)
    );
    let local = vectors_by_id(&local_out.join("part-0.parquet"));
    let remote = vectors_by_id(
        &srv.object("lake", "vectors/quickstart/part-0.parquet")
            .expect("output object"),
    );
    assert_eq!(local.len(), rows);
    assert_eq!(
        local.keys().collect::<Vec<_>>(),
        remote.keys().collect::<Vec<_>>()
    );
    for (id, v) in &local {
        let diff = v
            .iter()
            .zip(&remote[id])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff <= 1e-6, "{id}: {diff}");
    }
    // No probe or partial objects are left behind.
    assert_eq!(
        srv.keys("lake"),
        vec!["books/sample.parquet", "vectors/quickstart/part-0.parquet"]
    );

    // A live run elsewhere holds the output's lock (created with If-None-Match): refused.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let lock_file = tmp_lock(&format!(
        "{{\"host\":\"other-host\",\"pid\":7,\"started\":{now},\"heartbeat\":{now}}}"
    ));
    srv.put_file(
        "lake",
        "vectors/quickstart/part-0.parquet.embedflow-lock",
        lock_file.path(),
    );
    let o = run_s3(&srv, &crate::common::repo_dir(), &args, &[]);
    assert_fails_with(&o, 1, "another embedflow run is writing this output");
    assert!(
        stderr(&o).contains("host other-host, pid 7"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_file(
        srv.object("lake", "vectors/quickstart/part-0.parquet.embedflow-lock")
            .unwrap(),
    );

    // query reads the S3 output.
    let o = run_s3(
        &srv,
        &crate::common::repo_dir(),
        &[
            "query",
            "pipelines/quickstart.yaml",
            "--set",
            "sink.parquet.path=s3://lake/vectors/quickstart",
            "--set",
            "embed.max_seq_length=48",
            "how do I handle errors",
            "-k",
            "3",
        ],
        &[],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("score"), "{}", stdout(&o));
}

fn write_rows(path: &Path, ids: &[&str], texts: &[&str]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids.to_vec())),
        Arc::new(StringArray::from(texts.to_vec())),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

#[test]
fn hive_partitions_become_columns() {
    let srv = S3Server::start();
    srv.bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    for (lang, year, ids) in [
        ("en", "2023", ["a", "b"]),
        ("en", "2024", ["c", "d"]),
        ("de", "2024", ["e", "f"]),
    ] {
        let f = tmp.path().join(format!("{lang}{year}.parquet"));
        write_rows(&f, &ids, &["hello world", "good morning"]);
        srv.put_file(
            "lake",
            &format!("docs/lang={lang}/year={year}/part.parquet"),
            &f,
        );
    }
    std::fs::write(
        tmp.path().join("p.yaml"),
        "source:\n  tables:\n    docs: { path: s3://lake/docs/ }\n  sql: SELECT id, text, lang, year FROM docs WHERE year = '2024'\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: { path: out }\n",
    )
    .unwrap();
    assert_ok(&run_s3(
        &srv,
        tmp.path(),
        &["run", "p.yaml", "--no-progress"],
        &[],
    ));
    let o = run_s3(
        &srv,
        tmp.path(),
        &[
            "sql",
            "--table",
            "v=out/part-0.parquet",
            "--format",
            "json",
            "SELECT id, CAST(lang AS VARCHAR) AS lang, CAST(year AS VARCHAR) AS year FROM v ORDER BY id",
        ],
        &[],
    );
    assert_ok(&o);
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["lang"].as_str().unwrap().to_string(),
                r["year"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String, String)> = [("c", "en"), ("d", "en"), ("e", "de"), ("f", "de")]
        .iter()
        .map(|(i, l)| (i.to_string(), l.to_string(), "2024".to_string()))
        .collect();
    assert_eq!(got, want);

    // A glob over the same layout (DataFusion's `*` stays within one folder; `**` crosses).
    let o = run_s3(
        &srv,
        tmp.path(),
        &[
            "run",
            "p.yaml",
            "--no-progress",
            "--set",
            "source.tables.docs.path=s3://lake/docs/lang=en/**/*.parquet",
            "--set",
            "source.sql=SELECT id, text FROM docs",
        ],
        &[],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("rows read 4"), "{}", stdout(&o));
}

#[test]
fn failed_run_leaves_no_object_that_looks_finished() {
    let srv = S3Server::start();
    srv.bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    // Enough rows that the output is over the 10 MB multipart threshold before the failure.
    let n = 9_000;
    let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let texts: Vec<String> = (0..n).map(|i| format!("row {i} of the table")).collect();
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("n", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(texts)),
        Arc::new(Int64Array::from((0..n as i64).collect::<Vec<_>>())),
    ];
    let input = tmp.path().join("rows.parquet");
    write_batch(&input, RecordBatch::try_new(schema, cols).unwrap());
    srv.put_file("lake", "in/rows.parquet", &input);
    std::fs::write(
        tmp.path().join("p.yaml"),
        "source:\n  tables:\n    t: { path: s3://lake/in/rows.parquet }\n  sql: SELECT id, text, 10 / (n - 8800) AS x FROM t\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  max_seq_length: 16\nsink:\n  parquet: { path: s3://lake/out/vectors.parquet, row_group_rows: 1024 }\n",
    )
    .unwrap();
    let o = run_s3(&srv, tmp.path(), &["run", "p.yaml", "--no-progress"], &[]);
    assert_fails_with(&o, 1, "Divide by zero");
    assert_eq!(srv.keys("lake"), vec!["in/rows.parquet"]);
}

/// One pipeline reading `input` and writing to `output`.
fn s3_pipeline(dir: &Path, input: &str, output: &str) {
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "source:\n  tables:\n    t: {{ path: {input} }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: {{ path: {output} }}\n"
        ),
    )
    .unwrap();
}

#[test]
fn each_s3_failure_is_a_clear_error_naming_the_url() {
    let srv = S3Server::start();
    srv.bucket("lake");
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.parquet");
    write_rows(&good, &["a"], &["hello"]);
    srv.put_file("lake", "in/good.parquet", &good);
    std::fs::write(tmp.path().join("junk.parquet"), "this is not parquet").unwrap();
    srv.put_file("lake", "in/junk.parquet", &tmp.path().join("junk.parquet"));
    let run = |input: &str, output: &str, env: &[(&str, Option<&str>)]| {
        eprintln!("case: {input} -> {output} with {env:?}");
        s3_pipeline(tmp.path(), input, output);
        run_s3(&srv, tmp.path(), &["run", "p.yaml", "--no-progress"], env)
    };
    let local_out = "out";

    let o = run("s3://nobucket/in/good.parquet", local_out, &[]);
    assert_fails_with(
        &o,
        1,
        "s3://nobucket/in/good.parquet: the bucket does not exist",
    );

    let o = run(
        "s3://lake/in/good.parquet",
        local_out,
        &[("AWS_SECRET_ACCESS_KEY", Some("wrong-secret-0000"))],
    );
    assert_fails_with(&o, 1, "s3://lake/in/good.parquet: access denied");

    let o = run(
        "s3://lake/in/good.parquet",
        local_out,
        &[("AWS_ENDPOINT_URL", Some("http://127.0.0.1:9"))],
    );
    assert_fails_with(
        &o,
        1,
        "s3://lake/in/good.parquet: cannot reach the S3 endpoint",
    );

    let o = run(
        "s3://lake/in/good.parquet",
        local_out,
        &[
            ("AWS_ACCESS_KEY_ID", None),
            ("AWS_SECRET_ACCESS_KEY", None),
            ("AWS_PROFILE", Some("analytics")),
        ],
    );
    assert_fails_with(&o, 2, "s3://lake/in/good.parquet: no AWS credentials");
    assert!(
        stderr(&o).contains("AWS_PROFILE=analytics"),
        "{}",
        stderr(&o)
    );

    let o = run("s3://lake/in/junk.parquet", local_out, &[]);
    assert_fails_with(&o, 1, "s3://lake/in/junk.parquet");
    assert!(stderr(&o).contains("not Parquet"), "{}", stderr(&o));

    let o = run("s3://lake/in/missing.parquet", local_out, &[]);
    assert_fails_with(&o, 1, "s3://lake/in/missing.parquet");

    // Output problems are found before anything is embedded.
    let o = run("s3://lake/in/good.parquet", "s3://nobucket/out", &[]);
    assert_fails_with(
        &o,
        1,
        "s3://nobucket/out/part-0.parquet: the bucket does not exist",
    );
    assert!(!stdout(&o).contains("rows read"));

    let o = run("s3://lake/in/good.parquet", "gs://lake/out", &[]);
    assert_fails_with(&o, 2, "unsupported scheme `gs://`");

    // Credentials never show, even at the most verbose level.
    s3_pipeline(tmp.path(), "s3://lake/in/good.parquet", "s3://lake/out");
    for cmd in ["run", "validate", "explain"] {
        let o = run_s3(&srv, tmp.path(), &["-vvv", cmd, "p.yaml"], &[]);
        assert_ok(&o);
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(!all.contains(SECRET_KEY), "{cmd} printed the secret");
    }
}
