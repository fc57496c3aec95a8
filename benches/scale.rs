//! Scale: an `embed.vector` pipeline (precomputed vectors, so the model's time hides nothing
//! else) over N rows, incremental with `deletes: true`: its first run and a re-run after 0.1% of
//! the vectors changed, each without and with a memory limit. Then the same rows as a Delta
//! table with its change data feed on: a re-run after 0.1% of the rows were updated, reading the
//! feed against fingerprinting every row. Then a Pinecone bulk import of the rows (a real S3
//! server and the project's Pinecone test server): files written per second. Each figure is the
//! whole `embedflow run` a user starts: wall time, the time before rows stream (plan, id checks,
//! classification against the state), the time they stream (write, carry-over), peak RSS and
//! the files spilled to disk.
//!
//!     cargo bench --bench scale [-- --rows 1000000] [--dim 8] [--limit-mib 256]
//!         [--import-rows 1000000] [--skip-plain] [--skip-delta] [--skip-import]

// Only `arg` and peak RSS of the shared helpers are used here.
#[allow(dead_code)]
#[path = "../tests/it/common/s3.rs"]
mod s3;
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
    run_with(dir, "p.yaml", extra, &[])
}

fn run_with(dir: &Path, yaml: &str, extra: &[&str], env: &[(&str, String)]) -> Result<Measured> {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_embedflow"))
        .args([
            "run",
            yaml,
            "--no-progress",
            "-q",
            "--summary-json",
            "s.json",
        ])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
    let args: Vec<String> = std::env::args().collect();
    let skip = |flag: &str| args.iter().any(|a| a == flag);
    if !skip("--skip-plain") {
        plain(d, rows, dim, &limit)?;
    }
    if !skip("--skip-delta") {
        delta_change_feed(d, rows, dim, &limit)?;
    }
    if !skip("--skip-import") {
        bulk_import(d, arg("--import-rows", rows.min(1_000_000))?, dim)?;
    }
    Ok(())
}

/// A Parquet source: the first run, `--full` under the limit, and the incremental re-run after
/// 0.1% of the vectors moved, without and with the limit.
fn plain(d: &Path, rows: usize, dim: usize, limit: &str) -> Result<()> {
    println!();
    println!(
        "| run | rows written | wall s | before streaming s | streaming s | peak RSS MiB | spill files |"
    );
    println!("|---|---|---|---|---|---|---|");
    show("first run (every row new)", run(d, &[]));
    copy_dir(&d.join("state"), &d.join("state.first"))?;
    copy_dir(&d.join("out"), &d.join("out.first"))?;
    show(
        &format!("first run again (--full), limit {limit}"),
        run(d, &["--full", "--memory-limit", limit]),
    );
    write_table(&d.join("vectors.parquet"), rows, dim, true)?;
    for (name, extra) in [
        ("incremental, 0.1% changed".to_string(), vec![]),
        (
            format!("incremental, 0.1% changed, limit {limit}"),
            vec!["--memory-limit", limit],
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

/// The rows of `vectors.parquet` as a Delta table with its change data feed on, written in
/// commits of at most 1M rows.
fn write_delta(d: &Path, table: &Path) -> Result<()> {
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(d.join("vectors.parquet"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(GROUP)
        .build()?;
    let rt = tokio::runtime::Runtime::new()?;
    std::fs::create_dir_all(table)?;
    let url = url::Url::from_directory_path(std::fs::canonicalize(table)?)
        .map_err(|()| anyhow::anyhow!("not a folder"))?;
    let mut pending = Vec::new();
    let mut held = 0;
    let mut first = true;
    let flush = |batches: Vec<RecordBatch>, first: bool| -> Result<()> {
        rt.block_on(async {
            let t = deltalake_core::DeltaTable::try_from_url(url.clone()).await?;
            let mut w = t.write(batches);
            if first {
                w = w.with_configuration([("delta.enableChangeDataFeed", Some("true"))]);
            }
            w.await?;
            anyhow::Ok(())
        })
    };
    for batch in reader {
        let batch = batch?;
        held += batch.num_rows();
        pending.push(batch);
        if held >= 1_000_000 {
            flush(std::mem::take(&mut pending), first)?;
            first = false;
            held = 0;
        }
    }
    if !pending.is_empty() {
        flush(pending, first)?;
    }
    Ok(())
}

/// A Delta source with its change feed: the first run, then 0.1% of the rows updated (their
/// `lang`), read through the feed and, against it, by fingerprinting every row (`source.sql`
/// turns the feed off).
fn delta_change_feed(d: &Path, rows: usize, dim: usize, limit: &str) -> Result<()> {
    let t = Instant::now();
    write_table(&d.join("vectors.parquet"), rows, dim, false)?;
    let table = d.join("lake");
    write_delta(d, &table)?;
    println!();
    println!(
        "Delta table of the same {rows} rows, change data feed on (written in {:.1} s); 0.1% of the rows updated (lang), memory limit {limit}:",
        t.elapsed().as_secs_f64()
    );
    println!();
    println!(
        "| run | rows written | wall s | before streaming s | streaming s | peak RSS MiB | spill files |"
    );
    println!("|---|---|---|---|---|---|---|");
    let feed = "source:\n  tables:\n    v: { path: lake }\nembed:\n  vector: vector\n  id: id\nsink:\n  parquet: { path: dout }\nincremental:\n  state: dstate\n  deletes: true\n";
    std::fs::write(d.join("feed.yaml"), feed)?;
    std::fs::write(
        d.join("scan.yaml"),
        feed.replace(
            "v: { path: lake }\n",
            "v: { path: lake }\n  sql: SELECT * FROM v\n",
        ),
    )?;
    show(
        "first run (every row new)",
        run_with(d, "feed.yaml", &["--memory-limit", limit], &[]),
    );
    copy_dir(&d.join("dstate"), &d.join("dstate.first"))?;
    copy_dir(&d.join("dout"), &d.join("dout.first"))?;
    tokio::runtime::Runtime::new()?.block_on(async {
        let url = url::Url::from_directory_path(std::fs::canonicalize(&table)?)
            .map_err(|()| anyhow::anyhow!("not a folder"))?;
        deltalake_core::DeltaTable::try_from_url(url)
            .await?
            .update()
            .with_predicate("id LIKE '%000'")
            .with_update("lang", "'fr'")
            .await?;
        anyhow::Ok(())
    })?;
    for (name, yaml) in [
        ("incremental, the change feed", "feed.yaml"),
        (
            "incremental, every row fingerprinted (source.sql)",
            "scan.yaml",
        ),
    ] {
        copy_dir(&d.join("dstate.first"), &d.join("dstate"))?;
        copy_dir(&d.join("dout.first"), &d.join("dout"))?;
        let m = run_with(d, yaml, &["--memory-limit", limit], &[]).and_then(|m| {
            let changed = m.summary["incremental"]["metadata_only"]
                .as_u64()
                .unwrap_or(0);
            if changed != rows.div_ceil(1000) as u64 {
                bail!("{changed} rows changed, not {}", rows.div_ceil(1000));
            }
            Ok(m)
        });
        show(name, m);
    }
    Ok(())
}

/// One table row of a run's figures.
fn show(name: &str, m: Result<Measured>) {
    match m {
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
    }
}

/// A Pinecone bulk import of `rows` rows: files written to a real S3 server (s3s-fs) and
/// imported by the project's Pinecone test server.
fn bulk_import(d: &Path, rows: usize, dim: usize) -> Result<()> {
    use pinecone_test_server::{ImportStorage, IndexConfig, PineconeServer, ServerConfig};
    const KEY: &str = "bench-import-key";
    write_table(&d.join("vectors.parquet"), rows, dim, false)?;
    let s3 = s3::S3Server::start();
    s3.bucket("imports");
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", dim)]);
    config.import_storage = Some(ImportStorage::new(
        &s3.endpoint,
        s3::ACCESS_KEY,
        s3::SECRET_KEY,
    ));
    let srv = PineconeServer::start(config)?;
    let file_rows = 100_000;
    std::fs::write(
        d.join("import.yaml"),
        format!(
            "source:\n  tables:\n    v: {{ path: vectors.parquet }}\nembed:\n  vector: vector\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    namespace: scale\n    metadata: [lang]\n    import:\n      uri: s3://imports/scale/\n      file_rows: {file_rows}\n",
            srv.controller_url()
        ),
    )?;
    let mut env: Vec<(&str, String)> = s3.env();
    env.push(("PINECONE_API_KEY", KEY.to_string()));
    let m = run_with(d, "import.yaml", &[], &env)?;
    let files = rows.div_ceil(file_rows);
    let stream = m.summary["stream_seconds"].as_f64().unwrap_or(0.0);
    println!();
    println!(
        "Pinecone bulk import of {rows} rows ({dim} floats each; {files} files of {file_rows} rows, to a local S3 server, imported by the test server): wall {:.1} s, peak RSS {:.0} MiB; {} records imported; writing and importing {:.1} s: {:.2} files/s, {:.0} rows/s",
        m.wall,
        m.peak_mib,
        m.summary["rows_written"],
        stream,
        files as f64 / stream.max(1e-9),
        rows as f64 / stream.max(1e-9)
    );
    Ok(())
}
