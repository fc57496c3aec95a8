//! Peak RSS of `embedflow run` reading its table from S3 (a real S3 server, s3s-fs, on
//! 127.0.0.1) and writing vectors back to S3, over 20k and 200k short rows. Reads are ranged
//! GETs of row groups, so the larger table should cost about the same memory.
//!
//!     cargo bench --bench s3_rss
//!
//! EMBEDFLOW_BENCH_RSS_ROWS sets the row counts (default 20000,200000).

#[allow(dead_code)]
#[path = "../tests/it/common/s3.rs"]
mod s3;
mod support;

use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use support::{peak_rss_kib, print_peak_growth, short_corpus};

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
        short_corpus(&local, n)?;
        srv.put_file("lake", &format!("in/rows-{n}.parquet"), &local);
        let yaml = dir.path().join(format!("p-{n}.yaml"));
        std::fs::write(
            &yaml,
            format!(
                "source:\n  tables:\n    t: {{ path: s3://lake/in/rows-{n}.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: {{ path: s3://lake/out/rows-{n} }}\n"
            ),
        )?;
        let start = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_embedflow"))
            .args(["-q", "run", "--no-progress"])
            .arg(&yaml)
            .envs(srv.env())
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let (peak, status) = peak_rss_kib(child)?;
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
    print_peak_growth(&peaks);
    Ok(())
}
