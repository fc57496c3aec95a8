//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

#[allow(dead_code)]
pub mod s3;

/// How soon a run must stop after SIGTERM or SIGINT, on any machine: Kubernetes (and most
/// schedulers) kill a process 30 s after SIGTERM, and a stop must land well inside that grace
/// period, whatever the machine's speed (embed() gives up between micro-batches).
pub const STOP_WITHIN: std::time::Duration = std::time::Duration::from_secs(30 - 10);

/// The clone the tests run in. Cargo sets `CARGO_MANIFEST_DIR` when it runs a test binary; the
/// path compiled in is that of the clone that built it, which may be another clone sharing the
/// target folder (CI's clean clones do), whose `../shared` is not this one's.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// `../shared` beside the repository (or `$EMBEDFLOW_SHARED`). Tests that need it are
/// `#[ignore]`d with that reason; run on their own without it, they fail saying so.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("EMBEDFLOW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_dir().join("../shared"));
    assert!(
        dir.join("golden").is_dir(),
        "{} not found: this test needs the golden vectors, the fp32 model and the corpora there",
        dir.display()
    );
    dir
}

/// The embedflow binary with `args` in `cwd`, its environment cleared of variables that would
/// change a test's outcome. The one way the tests start the binary.
pub fn embedflow_command(cwd: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_embedflow"));
    cmd.args(args).current_dir(cwd);
    for var in [
        "EMBEDFLOW_LOG",
        "EMBEDFLOW_MEMORY_LIMIT",
        "PINECONE_CONTROLLER_HOST",
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL_S3",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(var);
    }
    // Several tests run at once, each starting processes with a thread per core: ONNX Runtime's
    // threads sleep between operators rather than spin on cores other tests' processes wait
    // for (the suite's CPU on 2 cores: 225 s -> 194 s). A test's `env` may say otherwise.
    cmd.env("OMP_WAIT_POLICY", "PASSIVE");
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// Runs the embedflow binary with `args` in `cwd`.
pub fn embedflow(cwd: &Path, args: &[&str]) -> Output {
    embedflow_env(cwd, args, &[])
}

/// Runs the embedflow binary with `args` in `cwd`, setting (`Some`) or removing (`None`)
/// environment variables.
pub fn embedflow_env(cwd: &Path, args: &[&str], env: &[(&str, Option<&str>)]) -> Output {
    embedflow_command(cwd, args, env)
        .output()
        .expect("run embedflow")
}

/// Writes a file (a pipeline, usually) into `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

pub fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failed run: the exit code, a one-line `error:` naming `needle`, and no panic.
pub fn assert_fails_with(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(
        err.contains(needle),
        "stderr should mention {needle:?}: {err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "panic: {err}"
    );
    let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error_lines.len(), 1, "one error line expected: {err}");
}

/// Writes a Parquet file with an `id` (Int64 or Utf8) and a nullable `text` column.
pub fn write_text_parquet(path: &Path, ids: &[&str], texts: &[Option<&str>]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids.to_vec())),
        Arc::new(StringArray::from(texts.to_vec())),
        Arc::new(Int64Array::from((0..ids.len() as i64).collect::<Vec<_>>())),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

pub fn write_batch(path: &Path, batch: RecordBatch) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

/// A pipeline over `table` writing to `out`, with extra YAML lines appended under `embed:`.
pub fn pipeline_yaml(table: &str, out: &str, embed_extra: &str) -> String {
    format!(
        "source:\n  tables:\n    docs: {{ path: {table} }}\nembed:\n  model: all-MiniLM-L6-v2\n  text: text\n  id: id\n{embed_extra}sink:\n  parquet: {{ path: {out} }}\n"
    )
}

/// Every record batch of a Parquet file.
pub fn read_batches(path: &Path) -> Vec<RecordBatch> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file =
        std::fs::File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Reads `id` and `vector` columns of a Parquet output.
pub fn read_vectors(path: &Path) -> Vec<(String, Vec<f32>)> {
    use datafusion::arrow::array::{AsArray, Float32Array};
    let mut out = Vec::new();
    for batch in read_batches(path) {
        let ids =
            datafusion::arrow::compute::cast(batch.column_by_name("id").unwrap(), &DataType::Utf8)
                .unwrap();
        let ids = ids.as_string::<i32>().clone();
        let vectors = batch
            .column_by_name("vector")
            .unwrap()
            .as_fixed_size_list()
            .clone();
        for i in 0..batch.num_rows() {
            let v = vectors.value(i);
            let v = v.as_any().downcast_ref::<Float32Array>().unwrap();
            out.push((ids.value(i).to_string(), v.values().to_vec()));
        }
    }
    out
}

/// One text column of a Parquet file, row by row (nulls as empty text).
pub fn read_text_column(path: &Path, name: &str) -> Vec<String> {
    use datafusion::arrow::array::{Array, AsArray};
    let mut out = Vec::new();
    for batch in read_batches(path) {
        let column = batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name} in {}", path.display()));
        let text = datafusion::arrow::compute::cast(column, &DataType::Utf8).unwrap();
        let text = text.as_string::<i32>();
        out.extend((0..text.len()).map(|i| {
            if text.is_null(i) {
                String::new()
            } else {
                text.value(i).to_string()
            }
        }));
    }
    out
}

/// The `.parquet` files in a folder, by name, sorted.
pub fn parquet_names(folder: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    names.sort();
    names
}

/// Words the synthetic test corpora are made of.
pub const WORDS: [&str; 12] = [
    "river",
    "compiler",
    "garden",
    "invoice",
    "harbor",
    "protein",
    "violin",
    "glacier",
    "ledger",
    "satellite",
    "bakery",
    "tunnel",
];

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    embedflow::embed::eval::cosine(a, b)
}

/// Both maps hold the same ids, and each id's vectors differ by at most `tolerance` anywhere.
pub fn assert_same_vectors(
    want: &std::collections::BTreeMap<String, Vec<f32>>,
    got: &std::collections::BTreeMap<String, Vec<f32>>,
    tolerance: f32,
) {
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same ids"
    );
    for (id, w) in want {
        let worst = w
            .iter()
            .zip(&got[id])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tolerance, "{id}: vectors differ by {worst}");
    }
}

/// Every row's id and sparse vector in a Parquet output.
pub fn read_sparse(path: &Path) -> Vec<(String, embedflow::embed::bm25::Sparse)> {
    let mut out = Vec::new();
    for batch in read_batches(path) {
        let ids = datafusion::arrow::compute::cast(
            batch.column_by_name("id").unwrap(),
            &datafusion::arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let ids = datafusion::arrow::array::AsArray::as_string::<i32>(&ids);
        let sv = batch.column_by_name("sparse_values").unwrap();
        let sv = datafusion::arrow::array::AsArray::as_struct(sv);
        for i in 0..batch.num_rows() {
            out.push((
                ids.value(i).to_string(),
                embedflow::embed::bm25::udf::sparse_at(sv, i).unwrap(),
            ));
        }
    }
    out
}

/// The bundled sample (3,101 paragraphs of The Rust Programming Language).
pub fn sample() -> String {
    repo_dir().join("data/sample.parquet").display().to_string()
}

/// Every `every`th row of the bundled sample (all its columns) in `dir/subset.parquet`: for
/// the tests whose behaviour does not need the whole sample's volume.
pub fn sample_subset(dir: &Path, every: usize) -> (String, usize) {
    use datafusion::arrow::array::UInt32Array;
    use datafusion::arrow::compute::{concat_batches, take_record_batch};
    let batches = read_batches(Path::new(&sample()));
    let all = concat_batches(&batches[0].schema(), &batches).unwrap();
    let rows: Vec<u32> = (0..all.num_rows() as u32).step_by(every).collect();
    let subset = take_record_batch(&all, &UInt32Array::from(rows.clone())).unwrap();
    let path = dir.join("subset.parquet");
    write_batch(&path, subset);
    (path.display().to_string(), rows.len())
}
