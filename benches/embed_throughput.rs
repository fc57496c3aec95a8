//! Whole `run` path (Parquet scan → embed() → Parquet sink) on the benchmark corpora:
//! the first 10,000 rows of reuters_sentences (short texts) and the first 2,000 of imdb_reviews
//! (long texts, cut at 256 word pieces). Prints rows/s and tokens/s.
//!
//!     cargo bench --bench embed_throughput [-- MODEL]
//!
//! MODEL defaults to ../shared/models/all-MiniLM-L6-v2 (fp32) when present, else the offline
//! default all-MiniLM-L6-v2. EMBEDFLOW_SHARED points at another shared folder.

use std::path::PathBuf;

use embedflow::config::Pipeline;
use embedflow::run::{RunOptions, run_pipeline};

fn main() -> anyhow::Result<()> {
    let shared = std::env::var_os("EMBEDFLOW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    if !shared.join("data").is_dir() {
        eprintln!(
            "SKIPPED: {} not found (benchmark corpora)",
            shared.display()
        );
        return Ok(());
    }
    let fp32 = shared.join("models/all-MiniLM-L6-v2");
    let model = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| {
            if fp32.is_dir() {
                fp32.display().to_string()
            } else {
                "all-MiniLM-L6-v2".into()
            }
        });
    let out = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    println!("model: {model}");
    println!(
        "{:<22} {:>8} {:>10} {:>10} {:>12}",
        "input", "rows", "seconds", "rows/s", "tokens/s"
    );
    for (name, file, rows) in [
        ("reuters_sentences", "reuters_sentences.parquet", 10_000),
        ("imdb_reviews", "imdb_reviews.parquet", 2_000),
    ] {
        let yaml = format!(
            "source:\n  tables:\n    t: {{ path: {} }}\n  sql: SELECT id, text FROM t LIMIT {rows}\nembed:\n  model: {model}\n  id: id\nsink:\n  parquet: {{ path: {} }}\n",
            shared.join("data").join(file).display(),
            out.path().join(name).display()
        );
        let pipeline = Pipeline::parse(&yaml, &[])?;
        let s = rt.block_on(run_pipeline(&pipeline, &RunOptions { progress: false }))?;
        println!(
            "{:<22} {:>8} {:>10.1} {:>10.1} {:>12.0}",
            name,
            s.rows_embedded,
            s.seconds,
            s.rows_per_second(),
            s.tokens_per_second()
        );
    }
    Ok(())
}
