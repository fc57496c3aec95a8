//! The Pinecone writer, measured against the project's Pinecone-compatible server with 20 ms of
//! added latency per request:
//!
//! - `upload`: vectors/s of embedflow's writer alone (no embedding), side by side with the
//!   official Pinecone Python SDK (`Index.upsert(vectors, batch_size=100)`, with its default
//!   concurrency and with `max_concurrency=16`) on the same vectors. The SDK comes from
//!   `bash scripts/bench-setup.sh`; without it that row is skipped.
//! - `e2e`: the bundled sample, Parquet → Pinecone rows/s as a share of Parquet → Parquet
//!   (embedding-bound) rows/s on the same input.
//! - `rss`: peak RSS of `embedflow run` (Parquet → Pinecone) over 10k and 200k short rows.
//!
//!     cargo bench --bench pinecone_upload [-- upload e2e rss]
//!
//! EMBEDFLOW_BENCH_VECTORS sets the upload size (default 50,000); EMBEDFLOW_BENCH_RSS_ROWS the
//! RSS row counts (default 10000,200000).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use datafusion::arrow::array::{
    ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use embedflow::config::Pipeline;
use embedflow::driver::{RunOptions, run_locally as run_pipeline};
use embedflow::signals::Shutdown;
use embedflow::sink::Sink;
use embedflow::sink::pinecone::PineconeSink;
use embedflow::sink::pinecone::config::PineconeSinkSpec;
use pinecone_test_server::{Faults, IndexConfig, PineconeServer, ServerConfig};
use support::{peak_rss_kib, print_peak_growth, short_corpus};

const KEY: &str = "bench-key";
const DIM: usize = 384;
const LATENCY: Duration = Duration::from_millis(20);

fn server() -> Result<PineconeServer> {
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", DIM)]);
    config.faults = Faults {
        latency: LATENCY,
        ..Default::default()
    };
    Ok(PineconeServer::start(config)?)
}

/// Deterministic pseudo-random unit vectors with ids and a short text.
fn vectors(n: usize) -> (Vec<String>, Vec<f32>, Vec<String>) {
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut values = Vec::with_capacity(n * DIM);
    for _ in 0..n {
        let v: Vec<f32> = (0..DIM).map(|_| next()).collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        values.extend(v.iter().map(|x| x / norm));
    }
    let ids = (0..n).map(|i| format!("vec-{i:07}")).collect();
    let texts = (0..n)
        .map(|i| format!("document {i} about the harbor, the ledger and the violin"))
        .collect();
    (ids, values, texts)
}

fn batches(ids: &[String], values: &[f32], texts: &[String]) -> Result<Vec<RecordBatch>> {
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new(
            "vector",
            DataType::FixedSizeList(item.clone(), DIM as i32),
            true,
        ),
        Field::new("text", DataType::Utf8, true),
    ]));
    let mut out = Vec::new();
    for start in (0..ids.len()).step_by(1024) {
        let end = (start + 1024).min(ids.len());
        let vals = Float32Array::from(values[start * DIM..end * DIM].to_vec());
        let list = FixedSizeListArray::try_new(item.clone(), DIM as i32, Arc::new(vals), None)?;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids[start..end].to_vec())),
            Arc::new(list),
            Arc::new(StringArray::from(texts[start..end].to_vec())),
        ];
        out.push(RecordBatch::try_new(schema.clone(), cols)?);
    }
    Ok(out)
}

fn sink_spec(
    server: &PineconeServer,
    namespace: &str,
    batch_size: usize,
) -> Result<PineconeSinkSpec> {
    let yaml = format!(
        "index: docs\ncontroller: {}\napi_key: {KEY}\nnamespace: {namespace}\nmetadata: [text]\nbatch_size: {batch_size}\nconcurrency: 16\n",
        server.controller_url()
    );
    Ok(serde_yaml_ng::from_str(&yaml)?)
}

fn python() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("EMBEDFLOW_BENCH_PYTHON") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var_os("EMBEDFLOW_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::cache_dir().map(|d| d.join("embedflow")))?;
    let p = home.join("bench-venv/bin/python");
    p.is_file().then_some(p)
}

fn upload(rt: &tokio::runtime::Runtime) -> Result<()> {
    let n: usize = std::env::var("EMBEDFLOW_BENCH_VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let srv = server()?;
    let (ids, values, texts) = vectors(n);
    let data = batches(&ids, &values, &texts)?;
    println!(
        "\n== upload alone: {n} vectors of {DIM} dimensions + a text field, {} ms added latency per request",
        LATENCY.as_millis()
    );
    println!("{:<58} {:>9} {:>12}", "writer", "seconds", "vectors/s");
    let mut rows = Vec::new();
    for (label, batch_size) in [
        ("embedflow (batch_size 100, concurrency <= 16)", 100),
        (
            "embedflow (batch_size 200, concurrency <= 16; default)",
            200,
        ),
    ] {
        let spec = sink_spec(&srv, &format!("ef-{batch_size}"), batch_size)?;
        let schema = data[0].schema();
        let secs = rt.block_on(async {
            let start = Instant::now();
            let mut sink = PineconeSink::open(&spec, &schema).await?;
            for b in &data {
                sink.write(b.clone()).await?;
            }
            let report = Box::new(sink).finish().await?;
            anyhow::ensure!(report.rows_written == n as u64, "not every vector landed");
            Ok::<_, anyhow::Error>(start.elapsed().as_secs_f64())
        })?;
        anyhow::ensure!(srv.records("docs", &format!("ef-{batch_size}")).len() == n);
        println!("{label:<58} {secs:>9.2} {:>12.0}", n as f64 / secs);
        rows.push((label.to_string(), n as f64 / secs));
    }
    match python() {
        None => println!(
            "{:<58} SKIPPED: run `bash scripts/bench-setup.sh` for the Python SDK",
            "pinecone SDK"
        ),
        Some(py) => {
            let dir = tempfile::tempdir()?;
            let json = dir.path().join("vectors.json");
            let records: Vec<serde_json::Value> = (0..n)
                .map(|i| {
                    serde_json::json!({
                        "id": ids[i],
                        "values": &values[i * DIM..(i + 1) * DIM],
                        "metadata": { "text": texts[i] },
                    })
                })
                .collect();
            std::fs::write(&json, serde_json::to_vec(&records)?)?;
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/python/pinecone_sdk_upsert.py");
            let out = Command::new(&py)
                .arg(&script)
                .arg(&json)
                .arg(srv.controller_url())
                .arg(srv.index_url("docs").context("index url")?)
                .env("PINECONE_API_KEY", KEY)
                .output()
                .with_context(|| format!("cannot run {}", py.display()))?;
            if !out.status.success() {
                println!(
                    "pinecone SDK run failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let v: serde_json::Value = serde_json::from_str(line)?;
                let secs = v["seconds"].as_f64().unwrap_or(f64::NAN);
                let label = v["label"].as_str().unwrap_or("?");
                println!("{label:<58} {secs:>9.2} {:>12.0}", n as f64 / secs);
                rows.push((label.to_string(), n as f64 / secs));
            }
        }
    }
    if let Some((_, best_sdk)) = rows
        .iter()
        .filter(|(l, _)| l.starts_with("pinecone"))
        .max_by(|a, b| a.1.total_cmp(&b.1))
    {
        let ours = rows
            .iter()
            .find(|(l, _)| l.contains("default"))
            .map_or(f64::NAN, |r| r.1);
        println!(
            "embedflow default / best SDK configuration: {:.2}x",
            ours / best_sdk
        );
    }
    Ok(())
}

fn e2e(rt: &tokio::runtime::Runtime) -> Result<()> {
    let srv = server()?;
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.parquet");
    let out = tempfile::tempdir()?;
    let base = format!(
        "source:\n  tables:\n    docs: {{ path: {} }}\nembed:\n  model: all-MiniLM-L6-v2\n  text: body\n  id: id\n",
        sample.display()
    );
    println!(
        "\n== end to end: data/sample.parquet, offline model, Pinecone server with {} ms latency",
        LATENCY.as_millis()
    );
    println!(
        "{:<40} {:>8} {:>9} {:>10}",
        "pipeline", "rows", "seconds", "rows/s"
    );
    let mut rates = Vec::new();
    for (label, sink) in [
        (
            "Parquet -> embed -> Parquet",
            format!(
                "sink:\n  parquet: {{ path: {} }}\n",
                out.path().join("v").display()
            ),
        ),
        (
            "Parquet -> embed -> Pinecone",
            format!(
                "sink:\n  pinecone:\n    index: docs\n    controller: {}\n    api_key: {KEY}\n    metadata: [chapter, section, body]\n",
                srv.controller_url()
            ),
        ),
    ] {
        let p = Pipeline::parse(&format!("{base}{sink}"), &[])?;
        let s = rt.block_on(run_pipeline(&p, &RunOptions::default(), &Shutdown::never()))?;
        println!(
            "{label:<40} {:>8} {:>9.1} {:>10.1}",
            s.rows_written,
            s.seconds,
            s.rows_per_second()
        );
        rates.push(s.rows_per_second());
    }
    println!(
        "Pinecone sink / Parquet sink throughput: {:.1}%",
        100.0 * rates[1] / rates[0]
    );
    Ok(())
}

fn rss() -> Result<()> {
    let counts: Vec<usize> = std::env::var("EMBEDFLOW_BENCH_RSS_ROWS")
        .unwrap_or_else(|_| "10000,200000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let srv = server()?;
    let dir = tempfile::tempdir()?;
    println!("\n== peak RSS, embedflow run: short rows, Parquet -> embed -> Pinecone");
    println!("{:>10} {:>12} {:>9}", "rows", "peak RSS MiB", "seconds");
    let mut peaks = Vec::new();
    for n in counts {
        let input = dir.path().join(format!("rows-{n}.parquet"));
        short_corpus(&input, n)?;
        let yaml = dir.path().join(format!("p-{n}.yaml"));
        std::fs::write(
            &yaml,
            format!(
                "source:\n  tables:\n    t: {{ path: {} }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    namespace: rss-{n}\n    metadata: [text]\n",
                input.display(),
                srv.controller_url()
            ),
        )?;
        let start = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_embedflow"))
            .args(["-q", "run", "--no-progress"])
            .arg(&yaml)
            .env("PINECONE_API_KEY", KEY)
            .spawn()?;
        let (peak, status) = peak_rss_kib(child)?;
        anyhow::ensure!(status.success(), "embedflow run failed for {n} rows");
        println!(
            "{n:>10} {:>12.1} {:>9.1}",
            peak as f64 / 1024.0,
            start.elapsed().as_secs_f64()
        );
        peaks.push(peak as f64);
    }
    print_peak_growth(&peaks);
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let rt = tokio::runtime::Runtime::new()?;
    if want("upload") {
        upload(&rt)?;
    }
    if want("e2e") {
        e2e(&rt)?;
    }
    if want("rss") {
        rss()?;
    }
    Ok(())
}
