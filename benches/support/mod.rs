//! Helpers shared by the benchmarks: a synthetic table of short rows, peak-RSS measurement,
//! (`corpus`) the real corpora and the Python tools compared against, (`ceiling`) the machine's
//! fp32 ceiling and an encoder's arithmetic, and (`cluster`) a loopback Ballista cluster.

pub mod ceiling;
// Not every benchmark starts a cluster.
#[allow(dead_code)]
pub mod cluster;
pub mod corpus;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;

/// `n` short rows (`id`, `text`) in row groups of 8k rows, as a data platform would write them.
pub fn short_corpus(path: &Path, n: usize) -> Result<()> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
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

/// Prints how much the peak RSS of the largest input exceeds that of the smallest.
pub fn print_peak_growth(peaks: &[f64]) {
    if let (Some(first), Some(last)) = (peaks.first(), peaks.last()) {
        println!(
            "largest / smallest input peak RSS: {:+.1}%",
            100.0 * (last / first - 1.0)
        );
    }
}

/// Waits for `child` and returns its peak resident memory (KiB, polled from /proc).
pub fn peak_rss_kib(mut child: std::process::Child) -> Result<(u64, std::process::ExitStatus)> {
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(s) = std::fs::read_to_string(&status_path)
            && let Some(line) = s.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            return Ok((peak, status));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The number after `name` on the command line, else `default`.
#[allow(dead_code)] // not every benchmark takes flags
pub fn arg(name: &str, default: usize) -> Result<usize> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("a number after the flag")?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

/// The CPU the figures come from: its model name, family, and the SIMD features that decide
/// ONNX Runtime's fp32 and int8 kernels (AVX-512, VNNI). Every benchmark prints it, because the
/// same run is about twice as fast on a Zen 5 as on a Zen 4. (Not every benchmark measures speed.)
#[allow(dead_code)]
pub fn cpu_description() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let model = field("model name").unwrap_or_else(|| "unknown CPU".into());
    let family = field("cpu family").unwrap_or_else(|| "?".into());
    let flags = field("flags").unwrap_or_default();
    let has: Vec<&str> = flags.split_whitespace().collect();
    let simd: Vec<&str> = [
        "avx2",
        "fma",
        "avx512f",
        "avx512_bf16",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    ]
    .into_iter()
    .filter(|f| has.contains(f))
    .collect();
    format!(
        "CPU: {model} (family {family}); {}",
        if simd.is_empty() {
            "no AVX2".to_string()
        } else {
            simd.join(" ")
        }
    )
}
