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

/// `../shared` beside the repository, or None (with a message) on a user's clone.
/// With EMBEDFLOW_REQUIRE_SHARED=1 (CI) its absence fails the test.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("EMBEDFLOW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if dir.join("golden").is_dir() {
        return Some(dir);
    }
    if std::env::var("EMBEDFLOW_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "{} is missing and EMBEDFLOW_REQUIRE_SHARED=1",
            dir.display()
        );
    }
    eprintln!(
        "SKIPPED: {} not found (golden vectors, fp32 model and corpora live there)",
        dir.display()
    );
    None
}

/// Runs the embedflow binary with `args` in `cwd`.
pub fn embedflow(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_embedflow"))
        .args(args)
        .current_dir(cwd)
        .env_remove("EMBEDFLOW_LOG")
        .output()
        .expect("run embedflow")
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

/// Reads `id` and `vector` columns of a Parquet output.
pub fn read_vectors(path: &Path) -> Vec<(String, Vec<f32>)> {
    use datafusion::arrow::array::{AsArray, Float32Array};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
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

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    embedflow::embed::eval::cosine(a, b)
}
