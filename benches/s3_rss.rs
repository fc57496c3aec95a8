//! Peak RSS of `embedflow run` reading its table from S3 (a real S3 server, s3s-fs, on
//! 127.0.0.1) and writing vectors back to S3, over 20k and 200k short rows. Reads are ranged
//! GETs of row groups, so the larger table should cost about the same memory.
//!
//!     cargo bench --bench s3_rss
//!
//! EMBEDFLOW_BENCH_RSS_ROWS sets the row counts (default 20000,200000).

#[allow(dead_code)]
#[path = "../tests/common/s3.rs"]
mod s3;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;

fn corpus(path: &Path, n: usize) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    // Row groups of 8k rows, as a data platform would write them.
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(8192))
        .build();
    let mut w = ArrowWriter::try_new(std::fs::File::create(path)?, schema.clone(), Some(props))?;
    let words = [
        "river", "compiler", "garden", "invoice", "harbor", "protein", "violin",
    ];
    for start in (0..n).step_by(8192) {
        let end = (start + 8192).min(n);
        let ids: Vec<String> = (start..end).map(|i| format!("r{i}")).collect();
        let texts: Vec<String> = (start..end)
            .map(|i| {
                format!(
                    "row {i}: the {} near the {}",
                    words[i % 7],
                    words[(i / 7) % 7]
                )
            })
            .collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(texts)),
        ];
        w.write(&RecordBatch::try_new(schema.clone(), cols)?)?;
    }
    w.close()?;
    Ok(())
}

fn main() -> Result<()> {
    let counts: Vec<usize> = std::env::var("EMBEDFLOW_BENCH_RSS_ROWS")
        .unwrap_or_else(|_| "20000,200000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let srv = s3::S3Server::start();
    srv.bucket("lake");
    let dir = tempfile::tempdir()?;
    println!("== peak RSS, embedflow run: s3 Parquet -> embed -> s3 Parquet, short rows");
    println!(
        "{:>10} {:>12} {:>9} {:>10}",
        "rows", "peak RSS MiB", "seconds", "rows/s"
    );
    let mut peaks = Vec::new();
    for n in counts {
        let local = dir.path().join(format!("rows-{n}.parquet"));
        corpus(&local, n)?;
        srv.put_file("lake", &format!("in/rows-{n}.parquet"), &local);
        let yaml = dir.path().join(format!("p-{n}.yaml"));
        std::fs::write(
            &yaml,
            format!(
                "source:\n  tables:\n    t: {{ path: s3://lake/in/rows-{n}.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: {{ path: s3://lake/out/rows-{n} }}\n"
            ),
        )?;
        let start = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_embedflow"))
            .args(["-q", "run", "--no-progress"])
            .arg(&yaml)
            .envs(srv.env())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let status_path = format!("/proc/{}/status", child.id());
        let mut peak = 0u64;
        let status = loop {
            if let Ok(s) = std::fs::read_to_string(&status_path)
                && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
            {
                peak = peak.max(
                    line.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                );
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        anyhow::ensure!(status.success(), "embedflow run failed for {n} rows");
        anyhow::ensure!(
            srv.object("lake", &format!("out/rows-{n}/part-0.parquet"))
                .is_some(),
            "no output for {n} rows"
        );
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{n:>10} {:>12.1} {secs:>9.1} {:>10.1}",
            peak as f64 / 1024.0,
            n as f64 / secs
        );
        peaks.push(peak as f64);
    }
    if let (Some(first), Some(last)) = (peaks.first(), peaks.last()) {
        println!(
            "largest / smallest input peak RSS: {:+.1}%",
            100.0 * (last / first - 1.0)
        );
    }
    Ok(())
}
