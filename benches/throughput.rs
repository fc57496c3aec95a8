//! Throughput side by side: sentence-transformers, the raw ONNX Runtime Python loop and embedflow
//! (fp32 and int8, embed-only and end to end) on the same rows, in one run, alternating, best of
//! `--reps`; then parity of int8 (golden minimum cosine, STS-B Spearman) and peak RSS at 10k and
//! 200k rows.
//!
//!     bash scripts/bench-setup.sh                # once: the Python side from PyPI
//!     cargo bench --bench throughput [-- --quick] [--reps N] [--short-rows N] [--long-rows N]
//!                                     [--device cuda:0 --precision fp16] [--peak-gflops 460]
//!
//! Inputs: the first `--short-rows` (1000) rows of ../shared/data/reuters_sentences.parquet and
//! the first `--long-rows` (200) of imdb_reviews.parquet, cut at 256 word pieces. tokens/s counts
//! each row's word pieces after truncation, [CLS] and [SEP] included, padding excluded, with
//! tokenisation inside the timed part for every tool. `--quick` skips the RSS runs (about 6
//! minutes). `--device` adds an embed-only run on that device (a GPU machine).

mod support;

use support::corpus::{Input, golden_min_cosine, python_side, read_texts, shared_dir, write_input};

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use embedflow::config::Pipeline;
use embedflow::driver::{RunOptions, run_locally as run_pipeline};
use embedflow::embed::{Device, Precision};
use embedflow::embed::{EmbedSpec, Embedder, eval};
use embedflow::signals::Shutdown;

const LONG_WARM_UP: &str = "Warm-up text long enough to reach the longer sequence lengths of the \
benchmark, so that the first timed pass does not pay for ONNX Runtime growing its memory arena and \
preparing kernels for shapes it has not seen yet, which would otherwise be charged to whichever \
tool happens to run first in the pass rather than to the steady state that a long job runs in.";

/// Default fp32 peak (`--peak-gflops`): this project's current machine, 2 cores of a Zen 5 EPYC,
/// where ONNX Runtime's fp32 MatMuls reach 461 GFLOP/s (`benches/python/profile_ops.py`).
/// `../shared/BASELINES.md`'s 229 GFLOP/s was measured on an earlier Zen 4 machine.
const DEFAULT_PEAK_GFLOPS: usize = 460;

struct Args {
    quick: bool,
    reps: usize,
    short_rows: usize,
    long_rows: usize,
    device: Option<Device>,
    precision: Precision,
    peak_gflops: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        reps: 3,
        short_rows: 1000,
        long_rows: 200,
        device: None,
        precision: Precision::Fp32,
        peak_gflops: DEFAULT_PEAK_GFLOPS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--quick" => args.quick = true,
            "--reps" => args.reps = value()?.parse()?,
            "--short-rows" => args.short_rows = value()?.parse()?,
            "--long-rows" => args.long_rows = value()?.parse()?,
            "--peak-gflops" => args.peak_gflops = value()?.parse()?,
            "--device" => args.device = Some(value()?.parse().map_err(anyhow::Error::msg)?),
            "--precision" => {
                args.precision = match value()?.as_str() {
                    "fp32" => Precision::Fp32,
                    "int8" => Precision::Int8,
                    "fp16" => Precision::Fp16,
                    other => bail!("unknown precision {other}"),
                }
            }
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// FLOP per token of all-MiniLM-L6-v2 at mean sequence length `l` (../shared/BASELINES.md).
fn flop_per_token(l: f64) -> f64 {
    21.23e6 + 9216.0 * l
}

fn embed_seconds(embedder: &Embedder, input: &Input) -> Result<f64> {
    let rows: Vec<Option<&str>> = input.texts.iter().map(|t| Some(t.as_str())).collect();
    let t0 = Instant::now();
    let v = embedder.embed(&rows)?;
    let s = t0.elapsed().as_secs_f64();
    assert_eq!(v.len(), rows.len() * embedder.dim());
    Ok(s)
}

/// Parquet → embed → Parquet with the `run` code path; seconds of processing (model load excluded).
fn e2e_seconds(
    rt: &tokio::runtime::Runtime,
    model: &str,
    precision: Precision,
    input: &Input,
    out: &Path,
) -> Result<f64> {
    let yaml = format!(
        "source:\n  tables:\n    t: {{ path: {} }}\nembed:\n  model: {model}\n  id: id\n  precision: {}\nsink:\n  parquet: {{ path: {} }}\n",
        input.parquet.display(),
        precision.as_str(),
        out.join(format!("{}-{}", input.name, precision.as_str()))
            .display()
    );
    let pipeline = Pipeline::parse(&yaml, &[])?;
    let s = rt.block_on(run_pipeline(
        &pipeline,
        &RunOptions::default(),
        &Shutdown::never(),
    ))?;
    assert_eq!(s.rows_written as usize, input.texts.len());
    Ok(s.stream_seconds)
}

fn embedder(model: &str, precision: Precision, device: Device) -> Result<Embedder> {
    let mut opts = EmbedSpec::new(model);
    opts.precision = precision;
    opts.device = device;
    Embedder::load(&opts)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let peak_flops = args.peak_gflops as f64 * 1e9;
    let Some(shared) = shared_dir() else {
        eprintln!("SKIPPED: ../shared not found (benchmark corpora, fp32 model)");
        return Ok(());
    };
    let model_dir = shared.join("models/all-MiniLM-L6-v2");
    let model = model_dir.display().to_string();
    let onnx = model_dir.join("model.onnx");
    let python = python_side()?;
    let tmp = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    let cores = std::thread::available_parallelism()?.get();

    let fp32 = embedder(&model, Precision::Fp32, Device::Cpu)?;
    let int8 = embedder(&model, Precision::Int8, Device::Cpu)?;
    // One untimed pass each, as the Python side warms up before timing.
    let warm: Vec<Option<&str>> = (0..64)
        .map(|i| {
            Some(if i % 2 == 0 {
                "a short warm-up line"
            } else {
                LONG_WARM_UP
            })
        })
        .collect();
    fp32.embed(&warm)?;
    int8.embed(&warm)?;
    let mut inputs = Vec::new();
    for (name, file, n) in [
        ("short", "reuters_sentences.parquet", args.short_rows),
        ("long", "imdb_reviews.parquet", args.long_rows),
    ] {
        let texts = read_texts(&shared.join("data").join(file), 0, n)?;
        let strs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let tokens = fp32
            .tokenize(&strs)?
            .iter()
            .map(|e| e.get_ids().len() as u64)
            .sum();
        inputs.push(write_input(tmp.path(), name, texts, tokens)?);
    }
    println!(
        "all-MiniLM-L6-v2 on {cores} cores; best of {} alternating passes",
        args.reps
    );
    println!("{}", support::cpu_description());
    for i in &inputs {
        println!(
            "  {:<5} {} rows, {} tokens (mean {:.1} per row); fp32 ceiling {:.0} tok/s",
            i.name,
            i.texts.len(),
            i.tokens,
            i.tokens as f64 / i.texts.len() as f64,
            peak_flops / flop_per_token(i.tokens as f64 / i.texts.len() as f64)
        );
    }

    // tool -> input -> best seconds
    let mut best: BTreeMap<&str, BTreeMap<&str, f64>> = BTreeMap::new();
    let mut record = |tool: &'static str, input: &'static str, s: f64| {
        let e = best
            .entry(tool)
            .or_default()
            .entry(input)
            .or_insert(f64::MAX);
        *e = e.min(s);
    };
    for rep in 0..args.reps {
        eprintln!("pass {}/{}", rep + 1, args.reps);
        for input in &inputs {
            let n = input.name;
            record(
                "sentence-transformers",
                n,
                python.baseline_seconds("st", &onnx, input)?,
            );
            record(
                "onnxruntime (Python)",
                n,
                python.baseline_seconds("ort", &onnx, input)?,
            );
            record("embedflow fp32", n, embed_seconds(&fp32, input)?);
            record("embedflow int8", n, embed_seconds(&int8, input)?);
            record(
                "embedflow fp32 e2e",
                n,
                e2e_seconds(&rt, &model, Precision::Fp32, input, tmp.path())?,
            );
            record(
                "embedflow int8 e2e",
                n,
                e2e_seconds(&rt, &model, Precision::Int8, input, tmp.path())?,
            );
        }
    }
    let rate = |tool: &str, input: &Input| input.tokens as f64 / best[tool][input.name];

    println!();
    println!(
        "{:<24} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "tool (tokens/s)",
        "short",
        "long",
        "xST s",
        "xST l",
        "xORT s",
        "xORT l",
        "%peak s",
        "%peak l"
    );
    for tool in [
        "sentence-transformers",
        "onnxruntime (Python)",
        "embedflow fp32",
        "embedflow int8",
        "embedflow fp32 e2e",
        "embedflow int8 e2e",
    ] {
        let (s, l) = (&inputs[0], &inputs[1]);
        let peak = |i: &Input| {
            100.0 * rate(tool, i) * flop_per_token(i.tokens as f64 / i.texts.len() as f64)
                / peak_flops
        };
        println!(
            "{:<24} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.0}% {:>8.0}%",
            tool,
            rate(tool, s),
            rate(tool, l),
            rate(tool, s) / rate("sentence-transformers", s),
            rate(tool, l) / rate("sentence-transformers", l),
            rate(tool, s) / rate("onnxruntime (Python)", s),
            rate(tool, l) / rate("onnxruntime (Python)", l),
            peak(s),
            peak(l),
        );
    }
    println!(
        "(%peak: tokens/s x FLOP per token over the {:.0} GFLOP/s fp32 peak; int8 counts the same FLOP)",
        peak_flops / 1e9
    );
    for p in ["fp32", "int8"] {
        let e2e = format!("embedflow {p} e2e");
        let only = format!("embedflow {p}");
        println!(
            "end to end / embed-only, {p}: short {:.1}%, long {:.1}%",
            100.0 * rate(&e2e, &inputs[0]) / rate(&only, &inputs[0]),
            100.0 * rate(&e2e, &inputs[1]) / rate(&only, &inputs[1]),
        );
    }

    println!();
    let sts = eval::read_sts(&shared.join("data/stsb_dev.tsv"))?;
    for (name, e) in [("fp32", &fp32), ("int8", &int8)] {
        println!(
            "parity {name}: golden minimum cosine {:.5}, STS-B dev Spearman {:.4}",
            golden_min_cosine(e, &shared)?,
            eval::sts_spearman(e, &sts)?
        );
    }

    if let Some(device) = &args.device {
        let gpu = embedder(&model, args.precision, device.clone())?;
        for input in &inputs {
            let mut s = f64::MAX;
            for _ in 0..args.reps {
                s = s.min(embed_seconds(&gpu, input)?);
            }
            println!(
                "{device} {}: {} {:.0} tokens/s",
                args.precision.as_str(),
                input.name,
                input.tokens as f64 / s
            );
        }
    } else {
        println!("GPU: not measured (pass --device cuda:0 --precision fp16 on a GPU machine)");
    }

    if args.quick {
        println!("peak RSS: skipped (--quick)");
        return Ok(());
    }
    let mut peaks = Vec::new();
    for rows in [10_000usize, 200_000] {
        let corpus = tmp.path().join(format!("rss-{rows}.parquet"));
        support::short_corpus(&corpus, rows)?;
        let yaml = tmp.path().join(format!("rss-{rows}.yaml"));
        std::fs::write(
            &yaml,
            format!(
                "source:\n  tables:\n    t: {{ path: {} }}\nembed:\n  model: {model}\n  id: id\nsink:\n  parquet: {{ path: {} }}\n",
                corpus.display(),
                tmp.path().join(format!("rss-out-{rows}")).display()
            ),
        )?;
        let t0 = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_embedflow"))
            .args(["-q", "run", "--no-progress"])
            .arg(&yaml)
            .stdout(std::process::Stdio::null())
            .spawn()?;
        let (kib, status) = support::peak_rss_kib(child)?;
        if !status.success() {
            bail!("embedflow run on {rows} rows failed");
        }
        println!(
            "peak RSS, Parquet -> embed fp32 -> Parquet, {rows} short rows: {:.1} MiB ({:.0} s)",
            kib as f64 / 1024.0,
            t0.elapsed().as_secs_f64()
        );
        peaks.push(kib as f64);
    }
    support::print_peak_growth(&peaks);
    Ok(())
}
