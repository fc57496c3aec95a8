//! Incremental runs: the nightly re-run of a 100,000-row table of which 1% changed, against the
//! full run of the same table, side by side in one run, locally and on a Ballista cluster of one
//! scheduler and `--executors` executors on this machine. Each figure is the whole
//! `embedflow run` a user starts (wall time of the process, model loading included).
//!
//!     cargo bench --bench incremental [-- --rows N] [--changed-percent P] [--executors 2]
//!
//! Input: the first `--rows` (100,000) sentences of ../shared/data/reuters_sentences.parquet,
//! or, without ../shared, synthetic short rows. The full run is the pipeline's first run (every
//! row new, so every row is embedded and recorded in the state); the incremental run follows it
//! after `--changed-percent` (1) of the texts were edited. The cluster runs the same pipeline
//! with its own output and state (`--executors 0` leaves the cluster out); each executor has one
//! task slot and `cores / executors` ONNX Runtime threads, so both use the same cores.

// Only the synthetic corpus, `arg` and the loopback cluster of the shared helpers are used here.
#[allow(dead_code)]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use support::arg;
use support::cluster::Loopback;

/// `(id, text)` rows: real sentences when ../shared is there, else synthetic ones.
fn corpus(rows: usize, dir: &Path) -> Result<(Vec<String>, Vec<String>, &'static str)> {
    let shared = std::env::var_os("EMBEDFLOW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    let (path, what) = {
        let real = shared.join("data/reuters_sentences.parquet");
        if real.is_file() {
            (real, "Reuters sentences (../shared/data)")
        } else {
            let p = dir.join("synthetic.parquet");
            support::short_corpus(&p, rows)?;
            (p, "synthetic short rows (no ../shared)")
        }
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?.build()?;
    let (mut ids, mut texts) = (Vec::new(), Vec::new());
    for batch in reader {
        let batch = batch?;
        let id = cast(
            batch.column_by_name("id").context("id column")?,
            &DataType::Utf8,
        )?;
        let text = cast(
            batch.column_by_name("text").context("text column")?,
            &DataType::Utf8,
        )?;
        let (id, text) = (id.as_string::<i32>(), text.as_string::<i32>());
        for i in 0..batch.num_rows() {
            if ids.len() == rows {
                break;
            }
            if text.is_valid(i) {
                ids.push(id.value(i).to_string());
                texts.push(text.value(i).to_string());
            }
        }
    }
    if ids.len() < rows {
        bail!("{} holds only {} rows", path.display(), ids.len());
    }
    Ok((ids, texts, what))
}

fn write(path: &Path, ids: &[String], texts: &[String]) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let mut w = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), None)?;
    for start in (0..ids.len()).step_by(8192) {
        let end = (start + 8192).min(ids.len());
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids[start..end].to_vec())),
            Arc::new(StringArray::from(texts[start..end].to_vec())),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
    }
    w.close()?;
    Ok(())
}

/// One `embedflow run` of `dir`'s `p.yaml` (with `extra` arguments): wall seconds and its summary.
fn run(dir: &Path, extra: &[&str]) -> Result<(f64, serde_json::Value)> {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_embedflow"))
        .args([
            "run",
            "p.yaml",
            "--no-progress",
            "--summary-json",
            "summary.json",
        ])
        .args(extra)
        .current_dir(dir)
        .output()?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "embedflow run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let summary = serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json"))?)?;
    Ok((secs, summary))
}

fn arguments(extra: &[String]) -> Vec<&str> {
    extra.iter().map(String::as_str).collect()
}

/// The full run, then the incremental run after the edit, in `dir`: `(seconds, summary)` of each.
struct Runs {
    full: (f64, serde_json::Value),
    incremental: (f64, serde_json::Value),
}

fn main() -> Result<()> {
    let rows = arg("--rows", 100_000)?;
    let percent = arg("--changed-percent", 1)?;
    let executors = arg("--executors", 2)?;
    let cores = std::thread::available_parallelism()?.get();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let (ids, mut texts, what) = corpus(rows, dir)?;
    let docs = dir.join("docs.parquet");
    write(&docs, &ids, &texts)?;
    let mut places = vec![("local", dir.join("local"), Vec::new())];
    let cluster = if executors > 0 {
        let cluster = Loopback::start(dir, executors, (cores / executors).max(1))?;
        let args = vec!["--cluster".to_string(), cluster.url.clone()];
        places.push(("cluster", dir.join("cluster"), args));
        Some(cluster)
    } else {
        None
    };
    for (_, place, _) in &places {
        std::fs::create_dir(place)?;
        std::fs::write(
            place.join("p.yaml"),
            format!(
                "source:\n  tables:\n    docs: {{ path: {} }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: {{ path: {} }}\nincremental:\n  state: {}\n  deletes: true\n",
                docs.display(),
                place.join("out").display(),
                place.join("state").display()
            ),
        )?;
    }
    println!(
        "input: {rows} rows of {what}; {percent}% of the texts edited between the runs; {cores} cores{}",
        match executors {
            0 => String::new(),
            n => format!(
                "; cluster: {n} executors x 1 task slot x {} ONNX Runtime threads",
                (cores / n).max(1)
            ),
        }
    );

    let mut full = Vec::new();
    for (_, place, extra) in &places {
        full.push(run(place, &arguments(extra))?);
    }
    let every = (100 / percent.max(1)).max(1);
    let mut changed = 0;
    for (i, t) in texts.iter_mut().enumerate() {
        if i % every == 0 {
            t.push_str(" (revised)");
            changed += 1;
        }
    }
    write(&docs, &ids, &texts)?;
    let mut results = Vec::new();
    for ((name, place, extra), full) in places.iter().zip(full) {
        let incremental = run(place, &arguments(extra))?;
        if incremental.1["rows_embedded"].as_u64() != Some(changed) {
            bail!(
                "the {name} incremental run embedded {} rows, not {changed}",
                incremental.1["rows_embedded"]
            );
        }
        results.push((name, Runs { full, incremental }));
    }
    drop(cluster);
    println!();
    println!("| where | run | rows embedded | rows written | wall s | share of the full run |");
    println!("|---|---|---|---|---|---|");
    for (name, runs) in &results {
        let (full_secs, full) = &runs.full;
        let (inc_secs, inc) = &runs.incremental;
        println!(
            "| {name} | full (first run) | {} | {} | {full_secs:.1} | 100% |",
            full["rows_embedded"], full["rows_written"]
        );
        println!(
            "| {name} | incremental, {percent}% changed | {} | {} | {inc_secs:.1} | {:.1}% |",
            inc["rows_embedded"],
            inc["rows_written"],
            100.0 * inc_secs / full_secs
        );
    }
    println!();
    for (name, runs) in &results {
        println!(
            "{name} incremental counts: {}",
            runs.incremental.1["incremental"]
        );
    }
    Ok(())
}
