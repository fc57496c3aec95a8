//! No user mistake destroys data, and nothing fails silently: outputs over sources, signals as
//! schedulers send them, duplicate and missing ids, variables that try to change the pipeline,
//! impossible model settings, and SQL that would write.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

fn sample(dir: &Path) {
    let ids = ["a", "b", "c", "d"];
    let texts = [
        Some("The borrow checker enforces ownership."),
        Some("Cargo builds Rust code."),
        Some("Channels send values between threads."),
        Some("Errors propagate with the ? operator."),
    ];
    write_text_parquet(&dir.join("docs.parquet"), &ids, &texts);
}

/// The bundled sample (3,101 paragraphs): long enough to be stopped in the middle.
fn long_sample(dir: &Path) {
    let src = crate::common::repo_dir().join("data/sample.parquet");
    std::fs::copy(src, dir.join("sample.parquet")).unwrap();
    write_file(
        dir,
        "long.yaml",
        "source:\n  tables:\n    docs: { path: sample.parquet }\n  sql: SELECT id, body AS text FROM docs\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: { path: out }\n",
    );
}

/// Starts `run long.yaml` in the background, its output captured.
fn spawn_long_run(d: &Path) -> std::process::Child {
    embedflow_command(d, &["run", "long.yaml", "--no-progress"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the run in `d` has opened its output (its lock file is there), then a second
/// more, so that it is embedding: a condition, not a guess at how long the model takes to load.
fn wait_until_writing(d: &Path, child: &mut std::process::Child) {
    wait_for_lock(d, child);
    std::thread::sleep(Duration::from_secs(1));
}

/// Waits until the run in `d` holds its output's lock; returns the lock file's path.
fn wait_for_lock(d: &Path, child: &mut std::process::Child) -> std::path::PathBuf {
    let lock = d.join("out/part-0.parquet.embedflow-lock");
    let start = Instant::now();
    while !lock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the run never opened its output"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it took its output's lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    lock
}

fn error_line(o: &std::process::Output) -> String {
    stderr(o)
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_output_over_a_source_is_refused_under_any_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in/sub")).unwrap();
    sample(&d.join("in"));
    std::os::unix::fs::symlink(d.join("in"), d.join("alias")).unwrap();
    let before = std::fs::read(d.join("in/docs.parquet")).unwrap();
    for (source, output) in [
        ("in/docs.parquet", "in/docs.parquet"),
        ("./in/docs.parquet", "in/sub/../docs.parquet"),
        ("in/docs.parquet", "alias/docs.parquet"),
        // A folder that holds the source, and a source folder that would hold the output.
        ("in/docs.parquet", "in"),
        ("in", "in/sub"),
        ("in/*.parquet", "alias"),
    ] {
        write_file(d, "p.yaml", &pipeline_yaml(source, output, ""));
        let o = embedflow(d, &["run", "p.yaml"]);
        assert_fails_with(&o, 2, "sink.parquet.path");
        let err = error_line(&o);
        assert!(
            err.contains(output) && err.contains(source) && err.contains("table `docs`"),
            "{source} -> {output}: {err}"
        );
        assert!(!stdout(&o).contains("rows read"), "it ran: {}", stdout(&o));
        assert_eq!(
            std::fs::read(d.join("in/docs.parquet")).unwrap(),
            before,
            "the source changed ({source} -> {output})"
        );
        assert!(!d.join("in/part-0.parquet").exists());
    }
    // A sibling output is fine.
    write_file(d, "p.yaml", &pipeline_yaml("in/docs.parquet", "out", ""));
    assert_ok(&embedflow(d, &["run", "p.yaml"]));
}

#[test]
fn sigterm_stops_cleanly_like_sigint_and_leaves_no_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    long_sample(d);
    // A previous good output, which an interrupted run must leave as it was.
    std::fs::create_dir_all(d.join("out")).unwrap();
    std::fs::write(d.join("out/part-0.parquet"), b"previous output").unwrap();
    for (signal, code, name) in [
        (libc::SIGTERM, 143, "SIGTERM"),
        (libc::SIGINT, 130, "SIGINT"),
    ] {
        let mut child = spawn_long_run(d);
        wait_until_writing(d, &mut child);
        // SAFETY: kill only sends a signal to the child we started.
        assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
        let stopped = Instant::now();
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "{name}: {err}");
        // Within Kubernetes' 30 s grace period, with margin (crate::common::STOP_WITHIN).
        assert!(
            stopped.elapsed() < STOP_WITHIN,
            "{name}: took {:?}",
            stopped.elapsed()
        );
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(
            errors,
            [format!(
                "error: interrupted by {name}: nothing was published; the previous output is as it was"
            )],
            "{err}"
        );
        // One message and the signal's warning: no ONNX Runtime noise, no panic.
        assert!(err.lines().count() <= 4, "{name}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("onnxruntime"),
            "{err}"
        );
        assert!(!stdout(&o).contains("rows read"), "{}", stdout(&o));
        let mut left: Vec<String> = std::fs::read_dir(d.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["part-0.parquet"], "{name}");
        assert_eq!(
            std::fs::read(d.join("out/part-0.parquet")).unwrap(),
            b"previous output"
        );
    }
}

#[test]
fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    long_sample(d);
    let mut child = spawn_long_run(d);
    wait_until_writing(d, &mut child);
    for _ in 0..2 {
        // SAFETY: kill only sends a signal to the child we started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(50));
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(stderr(&o).contains("SIGTERM again"), "{}", stderr(&o));
}

#[test]
fn staging_files_a_killed_run_left_are_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample(d);
    std::fs::create_dir_all(d.join("out")).unwrap();
    // What `kill -9` during a write leaves, and files that are not embedflow's.
    std::fs::write(d.join("out/part-0.parquet#1"), vec![0u8; 4096]).unwrap();
    std::fs::write(d.join("out/part-0.parquet#2"), vec![0u8; 4096]).unwrap();
    std::fs::write(d.join("out/notes#1"), b"mine").unwrap();
    std::fs::write(d.join("out/part-0.parquet.bak"), b"mine").unwrap();
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    assert_ok(&embedflow(d, &["run", "p.yaml"]));
    let mut left: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["notes#1", "part-0.parquet", "part-0.parquet.bak"]);
    assert_eq!(read_vectors(&d.join("out/part-0.parquet")).len(), 4);
}

#[test]
fn a_real_kill_9_leaves_nothing_the_next_run_trips_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    long_sample(d);
    let mut child = embedflow_command(d, &["run", "long.yaml", "--no-progress"], &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until_writing(d, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !d.join("out/part-0.parquet").exists(),
        "a killed run published"
    );
    // The next run over a few rows completes and leaves only its output.
    sample(d);
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    assert_ok(&embedflow(d, &["run", "p.yaml"]));
    let left: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left, ["part-0.parquet"]);
}

#[test]
fn duplicate_ids_fail_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_text_parquet(
        &d.join("docs.parquet"),
        &["a", "b", "a", "c", "a", "b"],
        &[
            Some("one"),
            Some("two"),
            Some("three"),
            Some("four"),
            Some("five"),
            Some("six"),
        ],
    );
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(&o, 1, "2 ids appear on more than one row (5 rows in all)");
    assert!(error_line(&o).contains("`a` on 3 rows"), "{}", stderr(&o));
    assert!(error_line(&o).contains("embed.duplicate_ids: keep_last"));
    assert!(!d.join("out/part-0.parquet").exists(), "output written");

    // keep_last: the Parquet sink keeps every row, and the summary says so.
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  duplicate_ids: keep_last\n"),
    );
    let o = embedflow(d, &["run", "p.yaml", "--summary-json", "s.json"]);
    assert_ok(&o);
    assert_eq!(read_vectors(&d.join("out/part-0.parquet")).len(), 6);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s.json")).unwrap()).unwrap();
    assert_eq!(s["rows_written"], 6);
    assert_eq!(s["duplicate_rows"], 3);
}

#[test]
fn null_and_empty_ids_are_errors_for_the_parquet_sink_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_text_parquet(
        &d.join("docs.parquet"),
        &["a", "", "c"],
        &[Some("one"), Some("two"), Some("three")],
    );
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(
        &o,
        1,
        "embed.id: column `id`: 1 rows have a null or empty id",
    );
    assert!(!d.join("out/part-0.parquet").exists());
    // A null id through SQL.
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "").replace(
            "    docs: { path: docs.parquet }\n",
            "    docs: { path: docs.parquet }\n  sql: SELECT CASE WHEN id = 'a' THEN NULL ELSE id END AS id, text FROM docs\n",
        ),
    );
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(&o, 1, "2 rows have a null or empty id");
}

#[test]
fn an_environment_value_stays_one_value() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample(d);
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml("docs.parquet", "${OUT}", "  batch_rows: ${ROWS}\n"),
    );
    // A value with `, key: value` is a folder name, not a second key.
    let o = embedflow_env(
        d,
        &["validate", "p.yaml"],
        &[
            ("OUT", Some("out, row_group_rows: 7")),
            ("ROWS", Some("64")),
        ],
    );
    assert_ok(&o);
    let o = embedflow_env(
        d,
        &["run", "p.yaml", "--summary-json", "s.json"],
        &[
            ("OUT", Some("out, row_group_rows: 7")),
            ("ROWS", Some("64")),
        ],
    );
    assert_ok(&o);
    assert!(d.join("out, row_group_rows: 7/part-0.parquet").is_file());
    // An error the value causes names the variable.
    let o = embedflow_env(
        d,
        &["validate", "p.yaml"],
        &[("OUT", Some("out")), ("ROWS", Some("many"))],
    );
    assert_fails_with(&o, 2, "embed.batch_rows");
    assert!(error_line(&o).contains("${ROWS}"), "{}", stderr(&o));
    let o = embedflow_env(
        d,
        &["validate", "p.yaml"],
        &[("OUT", Some("out")), ("ROWS", Some("0"))],
    );
    assert_fails_with(&o, 2, "embed.batch_rows: must be at least 1");
    assert!(error_line(&o).contains("${ROWS}"), "{}", stderr(&o));
}

#[test]
fn max_seq_length_beyond_the_position_embeddings_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample(d);
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  max_seq_length: 1024\n"),
    );
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(&o, 2, "embed.max_seq_length: 1024");
    assert!(error_line(&o).contains("use at most 512"), "{}", stderr(&o));
    assert!(!d.join("out").exists());
}

#[test]
fn sql_only_reads_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample(d);
    // In a pipeline's source.sql.
    for sql in [
        "COPY docs TO 'copied.parquet'",
        "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION 'docs.parquet'",
        "DROP TABLE docs",
    ] {
        write_file(
            d,
            "p.yaml",
            &pipeline_yaml("docs.parquet", "out", "").replace(
                "    docs: { path: docs.parquet }\n",
                &format!("    docs: {{ path: docs.parquet }}\n  sql: \"{sql}\"\n"),
            ),
        );
        let o = embedflow(d, &["run", "p.yaml"]);
        assert_fails_with(&o, 2, "source.sql");
        assert!(
            error_line(&o).contains("may only read"),
            "{sql}: {}",
            stderr(&o)
        );
        assert!(!d.join("copied.parquet").exists());
    }
    // In `embedflow sql`.
    let copy = "COPY (SELECT id FROM docs) TO 'copied.parquet' STORED AS PARQUET";
    let o = embedflow(d, &["sql", "--table", "docs=docs.parquet", copy]);
    assert_fails_with(&o, 2, "may only read");
    assert!(!d.join("copied.parquet").exists());
    let o = embedflow(
        d,
        &[
            "sql",
            "--allow-writes",
            "--table",
            "docs=docs.parquet",
            copy,
        ],
    );
    assert_ok(&o);
    assert!(d.join("copied.parquet").exists());
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sample(d);
    let mut child = embedflow_command(
        d,
        &[
            "sql",
            "--table",
            "docs=docs.parquet",
            "--format",
            "json",
            "SELECT d.id, n.v FROM docs d CROSS JOIN (SELECT * FROM generate_series(1, 50000) AS t(v)) n",
        ],
        &[],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Read one line, then close the pipe, as `| head -1` does.
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut out, &mut first).unwrap();
    drop(out);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("error"), "{}", stderr(&o));
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("docs.parquet"), b"not parquet at all").unwrap();
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(&o, 1, "docs.parquet");
    let err = error_line(&o);
    // No clause of the message appears twice.
    let parts: Vec<&str> = err.split(": ").filter(|p| p.len() > 12).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(p), "`{p}` repeats: {err}");
    }
}

#[test]
#[ignore = "needs root: mounts a 1 MiB tmpfs (scripts/test.sh runs it with the ../shared tests)"]
fn a_full_disk_stops_the_run_when_it_fills() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    long_sample(d);
    let small = d.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a tmpfs (needs root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    // The ids (unique, a few words each) instead of the paragraphs: the disk fills at the first
    // write of vectors (the sample's 3,101 vectors are 4.8 MB) however short the texts.
    write_file(
        d,
        "long.yaml",
        &std::fs::read_to_string(d.join("long.yaml"))
            .unwrap()
            .replace("body AS text", "id AS text"),
    );
    let o = embedflow(
        d,
        &[
            "run",
            "long.yaml",
            "--no-progress",
            "--set",
            &format!("sink.parquet.path={}", small.join("out").display()),
            "--set",
            "sink.parquet.row_group_rows=256",
        ],
    );
    assert_fails_with(&o, 1, "No space left on device");
    let err = error_line(&o);
    // The run stopped when the disk filled, long before the sample's 3,101 rows.
    let after: u64 = err
        .split("(after ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no row count in: {err}"));
    assert!(after < 3101, "{err}");
    // The cause once, without the wrappers' repetitions.
    assert!(!err.contains("External: External"), "{err}");
    let left: Vec<_> = std::fs::read_dir(small.join("out"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// What a failed run does to the record batches being embedded (`Local::abort`): an abandoned
/// embedder stops at its next micro-batch and counts the ones it left, instead of embedding rows
/// nobody will write.
#[test]
fn an_abandoned_embedder_stops_at_its_next_micro_batch() {
    use embedflow::embed::{EmbedSpec, Embedder};
    let mut spec = EmbedSpec::new("all-MiniLM-L6-v2");
    spec.batch_rows = 2;
    let embedder = Embedder::load(&spec).unwrap();
    let texts: Vec<Option<&str>> = WORDS.iter().take(10).map(|w| Some(*w)).collect();
    assert_eq!(embedder.embed(&texts).unwrap().len(), 10 * 384);
    let tokens = embedder.tokens_seen();
    assert_eq!(embedder.skipped_batches(), 0);

    embedder.abandon();
    let err = embedder.embed(&texts).unwrap_err();
    assert!(format!("{err:#}").contains("the run failed"), "{err:#}");
    // Ten rows, two per micro-batch: five left unrun, no token embedded.
    assert_eq!(embedder.skipped_batches(), 5);
    assert_eq!(embedder.tokens_seen(), tokens);
}

/// A Parquet file whose `text` column (a UTF-8 string column) holds bytes that are not UTF-8.
fn write_invalid_utf8(path: &Path) {
    use datafusion::parquet::data_type::{ByteArray, ByteArrayType};
    use datafusion::parquet::file::properties::WriterProperties;
    use datafusion::parquet::file::writer::SerializedFileWriter;
    use datafusion::parquet::schema::parser::parse_message_type;
    let schema = parse_message_type(
        "message docs { required binary id (UTF8); required binary text (UTF8); }",
    )
    .unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(
        file,
        std::sync::Arc::new(schema),
        std::sync::Arc::new(WriterProperties::builder().build()),
    )
    .unwrap();
    let mut group = writer.next_row_group().unwrap();
    let columns: [Vec<ByteArray>; 2] = [
        vec!["a".into(), "b".into()],
        vec!["fine".into(), ByteArray::from(vec![0x66, 0xff, 0xfe, 0x6f])],
    ];
    for values in columns {
        let mut column = group.next_column().unwrap().unwrap();
        column
            .typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        column.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn invalid_utf8_names_the_table_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_invalid_utf8(&d.join("docs.parquet"));
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(&o, 1, "table `docs`, column `text`");
    assert!(error_line(&o).contains("UTF-8"), "{}", stderr(&o));
    assert!(!d.join("out/part-0.parquet").exists());
}

#[test]
fn a_second_run_on_the_same_output_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    long_sample(d);
    // 200 of the sample's paragraphs. The first run is stopped (SIGSTOP) once it holds its lock
    // and resumed after the second was refused: held whatever the machine's speed.
    write_file(
        d,
        "long.yaml",
        &std::fs::read_to_string(d.join("long.yaml"))
            .unwrap()
            .replace("FROM docs", "FROM docs ORDER BY id LIMIT 200"),
    );
    let mut first = spawn_long_run(d);
    let lock = wait_for_lock(d, &mut first);
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGSTOP) }, 0);
    let o = embedflow(d, &["run", "long.yaml", "--no-progress"]);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(first.id() as i32, libc::SIGCONT) }, 0);
    assert_fails_with(&o, 1, "another embedflow run is writing this output");
    let err = error_line(&o);
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(err.contains("started 20"), "{err}");
    // The refused run touched nothing: the first one finishes and publishes.
    let o = first.wait_with_output().unwrap();
    assert_ok(&o);
    assert_eq!(read_vectors(&d.join("out/part-0.parquet")).len(), 200);
    assert!(!lock.exists(), "the lock outlived its run");

    // A lock left by a process that is gone (kill -9) is taken over.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    std::fs::write(
        &lock,
        format!(
            "{{\"host\":\"{}\",\"pid\":{gone_pid},\"started\":1,\"heartbeat\":1}}",
            String::from_utf8(
                std::process::Command::new("hostname")
                    .output()
                    .unwrap()
                    .stdout
            )
            .unwrap()
            .trim()
        ),
    )
    .unwrap();
    sample(d);
    write_file(d, "p.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("taking over the lock"),
        "{}",
        stderr(&o)
    );
    // One held by a live run elsewhere (fresh heartbeat) is not.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    std::fs::write(
        &lock,
        format!("{{\"host\":\"other-host\",\"pid\":1,\"started\":{now},\"heartbeat\":{now}}}"),
    )
    .unwrap();
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(&o, 1, "host other-host, pid 1");
}
