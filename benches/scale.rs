//! Scale: an `embed.vector` pipeline (precomputed vectors, so the model's time hides nothing
//! else) over N rows, incremental with `deletes: true`: its first run and a re-run after 0.1% of
//! the vectors changed, each without and with a memory limit. Each figure is the whole
//! `embedflow run` a user starts: wall time, the time before rows stream (plan, id checks,
//! classification against the state), the time they stream (write, carry-over), peak RSS and
//! the files spilled to disk.
//!
//!     cargo bench --bench scale [-- --rows 1000000] [--dim 8] [--limit-mib 256]

// Only `arg` and peak RSS of the shared helpers are used here.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail};
use datafusion::arrow::array::{ArrayRef, FixedSizeListArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Float32Type, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use support::{arg, peak_rss_kib};

const GROUP: usize = 65_536;

/// `rows` rows of `id`, `vector` (`dim` floats) and `lang`; every 1,000th vector is moved
/// when `changed`.
fn write_table(path: &Path, rows: usize, dim: usize, changed: bool) -> Result<()> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("vector", DataType::FixedSizeList(item, dim as i32), false),
        Field::new("lang", DataType::Utf8, false),
    ]));
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(GROUP))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), Some(props))?;
    for start in (0..rows).step_by(GROUP) {
        let end = (start + GROUP).min(rows);
        let ids = StringArray::from_iter_values((start..end).map(|i| format!("r{i:09}")));
        let vectors = FixedSizeListArray::from_iter_primitive::<Float32Type, _, _>(
            (start..end).map(|i| {
                let shift = if changed && i % 1000 == 0 { 1.0 } else { 0.0 };
                Some((0..dim).map(move |k| Some(((i * 31 + k * 7) % 997) as f32 / 997.0 + shift)))
            }),
            dim as i32,
        );
        let langs = StringArray::from_iter_values(
            (start..end).map(|i| if i % 3 == 0 { "de" } else { "en" }),
        );
        let cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(vectors), Arc::new(langs)];
        w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
    }
    w.close()?;
    Ok(())
}

struct Measured {
    wall: f64,
    peak_mib: f64,
    summary: serde_json::Value,
}

fn run(dir: &Path, extra: &[&str]) -> Result<Measured> {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_embedflow"))
        .args([
            "run",
            "p.yaml",
            "--no-progress",
            "-q",
            "--summary-json",
            "s.json",
        ])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log.txt"))?)
        .spawn()?;
    let (peak, status) = peak_rss_kib(child)?;
    let wall = start.elapsed().as_secs_f64();
    if !status.success() {
        bail!(
            "embedflow run {extra:?} failed: {}",
            std::fs::read_to_string(dir.join("log.txt"))?
        );
    }
    Ok(Measured {
        wall,
        peak_mib: peak as f64 / 1024.0,
        summary: serde_json::from_str(&std::fs::read_to_string(dir.join("s.json"))?)?,
    })
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    if to.exists() {
        std::fs::remove_dir_all(to)?;
    }
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let rows = arg("--rows", 1_000_000)?;
    let dim = arg("--dim", 8)?;
    let limit = format!("{}MiB", arg("--limit-mib", 256)?);
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    let t = Instant::now();
    write_table(&d.join("vectors.parquet"), rows, dim, false)?;
    println!(
        "input: {rows} rows of {dim}-float vectors ({:.0} MB of Parquet, written in {:.1} s); {} cores; memory limit {limit} where given",
        std::fs::metadata(d.join("vectors.parquet"))?.len() as f64 / 1e6,
        t.elapsed().as_secs_f64(),
        std::thread::available_parallelism()?.get()
    );
    std::fs::write(
        d.join("p.yaml"),
        "source:\n  tables:\n    v: { path: vectors.parquet }\nembed:\n  vector: vector\n  id: id\nsink:\n  parquet: { path: out }\nincremental:\n  state: state\n  deletes: true\n",
    )?;
    println!();
    println!(
        "| run | rows written | wall s | before streaming s | streaming s | peak RSS MiB | spill files |"
    );
    println!("|---|---|---|---|---|---|---|");
    let show = |name: &str, m: Result<Measured>| match m {
        Ok(m) => {
            let s = &m.summary;
            let seconds = s["seconds"].as_f64().unwrap_or(0.0);
            let stream = s["stream_seconds"].as_f64().unwrap_or(0.0);
            println!(
                "| {name} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} |",
                s["rows_written"],
                m.wall,
                seconds - stream,
                stream,
                m.peak_mib,
                s["spill_files"]
            );
        }
        Err(e) => println!(
            "| {name} | failed: {} |",
            e.to_string().lines().next().unwrap_or("")
        ),
    };
    show("first run (every row new)", run(d, &[]));
    copy_dir(&d.join("state"), &d.join("state.first"))?;
    copy_dir(&d.join("out"), &d.join("out.first"))?;
    show(
        &format!("first run again (--full), limit {limit}"),
        run(d, &["--full", "--memory-limit", &limit]),
    );
    write_table(&d.join("vectors.parquet"), rows, dim, true)?;
    for (name, extra) in [
        ("incremental, 0.1% changed".to_string(), vec![]),
        (
            format!("incremental, 0.1% changed, limit {limit}"),
            vec!["--memory-limit", limit.as_str()],
        ),
    ] {
        copy_dir(&d.join("state.first"), &d.join("state"))?;
        copy_dir(&d.join("out.first"), &d.join("out"))?;
        let m = run(d, &extra).and_then(|m| {
            let changed = m.summary["incremental"]["changed"].as_u64().unwrap_or(0);
            if changed != rows.div_ceil(1000) as u64 {
                bail!("{changed} rows changed, not {}", rows.div_ceil(1000));
            }
            Ok(m)
        });
        show(&name, m);
    }
    Ok(())
}
