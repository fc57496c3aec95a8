//! What a user sees, side by side with what embedflow replaces, in one run: the whole
//! `embedflow run` process (start-up, model loading, Parquet in and out) against
//! sentence-transformers, alternating, best of `--reps`.
//!
//!     bash scripts/bench-setup.sh        # once: sentence-transformers and the Pinecone SDK
//!     cargo bench --bench whole_run [-- --reps 3] [--short-rows 24000] [--long-rows 3600]
//!                                        [--notebook-rows 4000]
//!
//! 1. **Parquet to Parquet.** `embedflow run` in fp32 and in int8 (the int8 model is prepared and
//!    cached before timing, as after a user's first run) against sentence-transformers
//!    `encode(batch_size=32)` with its model loaded and warmed up, on the same rows: **short** =
//!    Reuters sentences from row 20,000 of `../shared/data/reuters_sentences.parquet`, **long** =
//!    IMDB reviews from row 50,000 of `imdb_reviews.parquet` (cut at 256 word pieces by both). The
//!    default sizes (6x the 4,000 and 600 rows of `../shared/BASELINES.md`) make every run last
//!    20 s or more here. Then fp32's share of the machine's ceiling: the encoder's arithmetic on
//!    each input (from the model's `config.json`, padding not counted) over the best time,
//!    against the cores' FMA throughput measured with an FMA loop before the timed runs.
//! 2. **The notebook's whole path to Pinecone**: sentence-transformers `encode`, then the official
//!    Pinecone SDK's `upsert(batch_size=100)`, against `embedflow run` to Pinecone, on
//!    `--notebook-rows` short rows, to the project's Pinecone-compatible server with 20 ms of
//!    latency per request. Both store the text as metadata; the server's records are checked.
//! 3. **Parity** of both precisions: minimum cosine to sentence-transformers' golden vectors and
//!    STS-B dev Spearman.

// The RSS and synthetic-corpus helpers are not used here.
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use embedflow::embed::{EmbedSpec, Embedder, Precision, eval};
use pinecone_test_server::{Faults, IndexConfig, PineconeServer, ServerConfig};
use support::arg;
use support::ceiling::{Encoder, fma_ceiling};
use support::corpus::{
    Input, Python, golden_min_cosine, python_side, read_texts, shared_dir, write_input,
};

const KEY: &str = "bench-key";
const ST: &str = "sentence-transformers";
/// FMA-loop measurements of the ceiling; the best counts.
const CEILING_TRIES: usize = 3;

/// One `embedflow run` of a pipeline whose sink is `sink` (YAML under `sink:`); wall seconds.
fn embedflow_run(
    dir: &Path,
    model: &Path,
    precision: &str,
    input: &Input,
    sink: &str,
) -> Result<f64> {
    let name = format!("{}-{precision}", input.name);
    let yaml = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &yaml,
        format!(
            "source:\n  tables:\n    t: {{ path: {} }}\nembed:\n  model: {}\n  id: id\n  precision: {precision}\nsink:\n{sink}",
            input.parquet.display(),
            model.display()
        ),
    )?;
    let summary = dir.join(format!("{name}.summary.json"));
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_embedflow"))
        .args(["-q", "run", "--no-progress", "--summary-json"])
        .arg(&summary)
        .arg(&yaml)
        .env("PINECONE_API_KEY", KEY)
        .output()?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "embedflow run {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary)?)?;
    if s["rows_written"].as_u64() != Some(input.texts.len() as u64) {
        bail!(
            "embedflow run {name} wrote {} of {} rows",
            s["rows_written"],
            input.texts.len()
        );
    }
    Ok(seconds)
}

/// Best (lowest) and every time of each (tool, input).
#[derive(Default)]
struct Times(BTreeMap<(String, &'static str), Vec<f64>>);

impl Times {
    fn add(&mut self, tool: &str, input: &'static str, s: f64) {
        self.0.entry((tool.to_string(), input)).or_default().push(s);
    }
    fn best(&self, tool: &str, input: &str) -> f64 {
        self.0
            .iter()
            .find(|((t, i), _)| t == tool && *i == input)
            .map_or(f64::NAN, |(_, v)| {
                v.iter().copied().fold(f64::MAX, f64::min)
            })
    }
    fn all(&self, tool: &str, input: &str) -> String {
        self.0
            .iter()
            .find(|((t, i), _)| t == tool && *i == input)
            .map_or(String::new(), |(_, v)| {
                v.iter()
                    .map(|s| format!("{s:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
    }
}

fn parquet_to_parquet(
    py: &Python,
    model: &Path,
    inputs: &[Input],
    reps: usize,
    dir: &Path,
) -> Result<Times> {
    let onnx = model.join("model.onnx");
    let mut times = Times::default();
    let out = |name: &str| {
        format!(
            "  parquet: {{ path: {} }}\n",
            dir.join("out").join(name).display()
        )
    };
    for rep in 0..reps {
        for input in inputs {
            eprintln!("pass {}/{reps}, {}", rep + 1, input.name);
            times.add(ST, input.name, py.baseline_seconds("st", &onnx, input)?);
            for p in ["fp32", "int8"] {
                let s = embedflow_run(dir, model, p, input, &out(&format!("{}-{p}", input.name)))?;
                times.add(&format!("embedflow {p}"), input.name, s);
            }
        }
    }
    println!(
        "\n== Parquet to Parquet: whole `embedflow run` vs sentence-transformers encode(batch_size=32), best of {reps}, alternating"
    );
    for input in inputs {
        println!(
            "  {:<5} {} rows, {} tokens after truncation (mean {:.1} per row)",
            input.name,
            input.texts.len(),
            input.tokens,
            input.tokens as f64 / input.texts.len() as f64
        );
    }
    println!(
        "{:<24} {:>9} {:>7} {:>9} {:>9} {:>7} {:>9}",
        "tool", "short s", "x ST", "tok/s", "long s", "x ST", "tok/s"
    );
    for tool in [ST, "embedflow fp32", "embedflow int8"] {
        let mut line = format!("{tool:<24}");
        for input in inputs {
            let s = times.best(tool, input.name);
            line += &format!(
                " {:>9.2} {:>6.2}x {:>9.0}",
                s,
                times.best(ST, input.name) / s,
                input.tokens as f64 / s
            );
        }
        println!("{line}");
    }
    for tool in [ST, "embedflow fp32", "embedflow int8"] {
        for input in inputs {
            println!(
                "  all runs, {tool}, {}: {} s",
                input.name,
                times.all(tool, input.name)
            );
        }
    }
    Ok(times)
}

/// fp32 against the machine's ceiling: the encoder's arithmetic on each input (padding not
/// counted) over the best whole-run time, as a share of the cores' measured FMA throughput.
/// Whole runs include start-up, tokenising and Parquet, so this is a floor on the share the
/// inference itself reached.
fn against_ceiling(
    times: &Times,
    inputs: &[Input],
    work: &BTreeMap<&str, f64>,
    ceiling: Option<(f64, &str)>,
    cores: usize,
) {
    let Some((peak, kind)) = ceiling else {
        println!("\n(no fp32 ceiling: this CPU has neither AVX-512 nor AVX2 with FMA)");
        return;
    };
    println!(
        "\n== fp32 against this machine's ceiling: {:.0} GFLOP/s ({kind} FMA loop on {cores} threads, best of {CEILING_TRIES})",
        peak / 1e9
    );
    for input in inputs {
        let flop = work[input.name];
        let mut line = format!(
            "  {:<5} {:.2} TFLOP ({:.1} MFLOP a token):",
            input.name,
            flop / 1e12,
            flop / input.tokens as f64 / 1e6
        );
        for tool in [ST, "embedflow fp32"] {
            let rate = flop / times.best(tool, input.name);
            line += &format!(
                " {tool} {:.0} GFLOP/s ({:.0}%);",
                rate / 1e9,
                100.0 * rate / peak
            );
        }
        println!("{}", line.trim_end_matches(';'));
    }
}

fn notebook_path(py: &Python, model: &Path, input: &Input, reps: usize, dir: &Path) -> Result<()> {
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)]);
    config.faults = Faults {
        latency: Duration::from_millis(20),
        ..Default::default()
    };
    let srv = PineconeServer::start(config)?;
    let index_url = srv.index_url("docs").context("index url")?;
    let mut times = Times::default();
    for rep in 0..reps {
        eprintln!("pass {}/{reps}, notebook path", rep + 1);
        let ns = format!("notebook-{rep}");
        let v = py.run_script(
            "notebook.py",
            &[
                input.jsonl.as_os_str(),
                "--st-model".as_ref(),
                py.st_model.as_os_str(),
                "--controller".as_ref(),
                srv.controller_url().as_ref(),
                "--index-url".as_ref(),
                index_url.as_ref(),
                "--namespace".as_ref(),
                ns.as_ref(),
            ],
            &[("PINECONE_API_KEY", KEY)],
        )?;
        if srv.records("docs", &ns).len() != input.texts.len() {
            bail!(
                "the notebook path stored {} of {} vectors",
                srv.records("docs", &ns).len(),
                input.texts.len()
            );
        }
        times.add(
            "notebook",
            input.name,
            v["seconds"].as_f64().context("no seconds")?,
        );
        times.add(
            "notebook: encode",
            input.name,
            v["encode_seconds"].as_f64().context("no encode_seconds")?,
        );
        times.add(
            "notebook: upsert",
            input.name,
            v["upsert_seconds"].as_f64().context("no upsert_seconds")?,
        );
        for p in ["fp32", "int8"] {
            let ns = format!("embedflow-{p}-{rep}");
            let sink = format!(
                "  pinecone:\n    index: docs\n    controller: {}\n    namespace: {ns}\n    metadata: [text]\n",
                srv.controller_url()
            );
            let s = embedflow_run(dir, model, p, input, &sink)?;
            if srv.records("docs", &ns).len() != input.texts.len() {
                bail!(
                    "embedflow {p} stored {} of {} vectors",
                    srv.records("docs", &ns).len(),
                    input.texts.len()
                );
            }
            times.add(&format!("embedflow {p}"), input.name, s);
        }
    }
    println!(
        "\n== The notebook's path to Pinecone (20 ms per request), {} short rows, best of {reps}",
        input.texts.len()
    );
    println!("{:<58} {:>9} {:>8}", "path", "seconds", "speed-up");
    let base = times.best("notebook", input.name);
    for (label, tool) in [
        (
            "notebook: ST encode + SDK upsert(batch_size=100)",
            "notebook",
        ),
        ("  of which encode", "notebook: encode"),
        ("  of which upsert", "notebook: upsert"),
        (
            "embedflow run fp32 -> Pinecone (whole process)",
            "embedflow fp32",
        ),
        (
            "embedflow run int8 -> Pinecone (whole process)",
            "embedflow int8",
        ),
    ] {
        let s = times.best(tool, input.name);
        let x = if tool.starts_with("embedflow") {
            format!("{:.2}x", base / s)
        } else {
            String::new()
        };
        println!(
            "{label:<58} {s:>9.2} {x:>8}   (all: {})",
            times.all(tool, input.name)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let reps = arg("--reps", 3)?.max(1);
    let short_rows = arg("--short-rows", 24_000)?;
    let long_rows = arg("--long-rows", 3_600)?;
    let notebook_rows = arg("--notebook-rows", 4_000)?;
    let Some(shared) = shared_dir() else {
        eprintln!("SKIPPED: ../shared not found (benchmark corpora, fp32 model)");
        return Ok(());
    };
    let py = python_side()?;
    let model = shared.join("models/all-MiniLM-L6-v2");
    let tmp = tempfile::tempdir()?;
    let load = |precision| {
        let mut spec = EmbedSpec::new(model.display().to_string());
        spec.precision = precision;
        Embedder::load(&spec)
    };
    // Loading int8 prepares and caches its model, so no timed run pays for that.
    let (fp32, int8) = (load(Precision::Fp32)?, load(Precision::Int8)?);
    // Word pieces per row, after truncation.
    let lengths = |texts: &[String]| -> Result<Vec<usize>> {
        let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
        Ok(fp32
            .tokenize(&strs)?
            .iter()
            .map(|e| e.get_ids().len())
            .collect())
    };
    let tokens =
        |texts: &[String]| -> Result<u64> { Ok(lengths(texts)?.iter().map(|&n| n as u64).sum()) };
    let encoder = Encoder::from_model(&model)?;
    let mut inputs = Vec::new();
    let mut work = BTreeMap::new();
    for (name, file, start, n) in [
        ("short", "reuters_sentences.parquet", 20_000, short_rows),
        ("long", "imdb_reviews.parquet", 50_000, long_rows),
    ] {
        let texts = read_texts(&shared.join("data").join(file), start, n)?;
        let rows = lengths(&texts)?;
        work.insert(name, rows.iter().map(|&l| encoder.row_flop(l)).sum::<f64>());
        let t = rows.iter().map(|&n| n as u64).sum();
        inputs.push(write_input(tmp.path(), name, texts, t)?);
    }
    let cores = std::thread::available_parallelism()?.get();
    println!("all-MiniLM-L6-v2 on {cores} cores; every tool uses all of them");
    println!("{}", support::cpu_description());
    // Measured before the timed runs, on a machine as quiet as theirs.
    let ceiling = fma_ceiling(cores, Duration::from_millis(500), CEILING_TRIES);
    let times = parquet_to_parquet(&py, &model, &inputs, reps, tmp.path())?;
    against_ceiling(&times, &inputs, &work, ceiling, cores);

    let texts = read_texts(
        &shared.join("data/reuters_sentences.parquet"),
        20_000,
        notebook_rows,
    )?;
    let t = tokens(&texts)?;
    let notebook = write_input(tmp.path(), "notebook", texts, t)?;
    notebook_path(&py, &model, &notebook, reps, tmp.path())?;

    println!("\n== Parity (golden: sentence-transformers 6.2 vectors; STS-B dev Spearman)");
    let sts = eval::read_sts(&shared.join("data/stsb_dev.tsv"))?;
    for (name, e) in [("fp32", &fp32), ("int8", &int8)] {
        println!(
            "{name}: golden minimum cosine {:.5}, STS-B dev Spearman {:.4}",
            golden_min_cosine(e, &shared)?,
            eval::sts_spearman(e, &sts)?
        );
    }
    Ok(())
}
