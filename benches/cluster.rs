//! The same pipeline run locally and on a Ballista cluster of one scheduler and two executors on
//! this machine, alternating, each figure the whole `embedflow run` a user starts (wall time of
//! the process, model loading included).
//!
//!     cargo bench --bench cluster [-- --repeat 3] [--partitions 8]
//!
//! Input: the bundled sample (`data/sample.parquet`, 3101 paragraphs), through the quickstart's
//! SQL, to a Parquet folder. The local run uses every core for ONNX Runtime; each executor has
//! one task slot and `cores / 2` ONNX Runtime threads, so both use the same cores.

// Only `arg` and the loopback cluster of the shared helpers are used here.
#[allow(dead_code)]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use support::arg;
use support::cluster::Loopback;

fn embedflow(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_embedflow"));
    c.args(args).current_dir(dir);
    c
}

/// One `embedflow run`: wall seconds and its summary.
fn run(dir: &Path, extra: &[&str]) -> Result<(f64, serde_json::Value)> {
    let mut args = vec!["run", "p.yaml", "--no-progress", "--summary-json", "s.json"];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let out = embedflow(dir, &args).output()?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "embedflow run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        secs,
        serde_json::from_str(&std::fs::read_to_string(dir.join("s.json"))?)?,
    ))
}

fn main() -> Result<()> {
    let repeat = arg("--repeat", 3)?.max(1);
    let partitions = arg("--partitions", 8)?.max(1);
    let cores = std::thread::available_parallelism()?.get();
    let per_executor = (cores / 2).max(1);
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample.parquet");
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "source:\n  tables:\n    docs: {{ path: {} }}\n  sql: \"SELECT id, section || ': ' || body AS text, chapter, url FROM docs\"\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: {{ path: out }}\n",
            sample.display()
        ),
    )?;

    let cluster = Loopback::start(dir, 2, per_executor)?;
    let port = cluster.port;
    let partitions_arg = partitions.to_string();
    let cluster_args = ["--cluster", &cluster.url, "--partitions", &partitions_arg];

    println!(
        "input: the bundled sample (3101 paragraphs); {cores} cores; cluster: 2 executors x 1 task slot x {per_executor} ONNX Runtime threads, {partitions} partitions"
    );
    let (mut local, mut clustered) = (Vec::new(), Vec::new());
    let mut last = serde_json::Value::Null;
    for _ in 0..repeat {
        local.push(run(dir, &[])?.0);
        let (secs, summary) = run(dir, &cluster_args)?;
        clustered.push(secs);
        last = summary;
    }
    let best = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!();
    println!("| run | wall s (best of {repeat}) | all runs |");
    println!("|---|---|---|");
    println!("| local | {:.1} | {local:.1?} |", best(&local));
    println!(
        "| cluster, 2 executors | {:.1} | {clustered:.1?} |",
        best(&clustered)
    );
    println!();
    println!(
        "cluster: rows written {}, partitions by executor {}, model loading on the client {:.1} s",
        last["rows_written"], last["partitions_by_worker"], last["model_seconds"]
    );
    stage_times(port)?;
    drop(cluster);
    Ok(())
}

/// Where the last cluster job's time went, from the scheduler's REST API: per stage, its tasks
/// and their execution times.
fn stage_times(port: u16) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let get = |path: String| -> Result<serde_json::Value> {
        rt.block_on(async {
            Ok(reqwest::get(format!("http://127.0.0.1:{port}{path}"))
                .await?
                .json()
                .await?)
        })
    };
    let jobs = get("/api/jobs".into())?;
    let job = jobs
        .as_array()
        .and_then(|j| j.last())
        .context("no job on the scheduler")?;
    let id = job["job_id"].as_str().context("job_id")?;
    let job_ms = job["end_time"].as_u64().unwrap_or(0) - job["start_time"].as_u64().unwrap_or(0);
    println!();
    println!(
        "last cluster job on the scheduler: {:.1} s from submission to completion",
        job_ms as f64 / 1000.0
    );
    println!("| stage | what | tasks | task time, sum s | slowest task s | span s |");
    println!("|---|---|---|---|---|---|");
    let stages = get(format!("/api/job/{id}/stages?plan_format=default"))?;
    for stage in stages["stages"].as_array().context("stages")? {
        let tasks: Vec<&serde_json::Value> = stage["tasks"]
            .as_array()
            .map(|t| t.iter().filter(|t| !t.is_null()).collect())
            .unwrap_or_default();
        let ms = |t: &serde_json::Value, k: &str| t[k].as_u64().unwrap_or(0);
        let sum: u64 = tasks.iter().map(|t| ms(t, "exec_duration")).sum();
        let max = tasks
            .iter()
            .map(|t| ms(t, "exec_duration"))
            .max()
            .unwrap_or(0);
        let first = tasks
            .iter()
            .map(|t| ms(t, "start_exec_time"))
            .min()
            .unwrap_or(0);
        let last = tasks
            .iter()
            .map(|t| ms(t, "end_exec_time"))
            .max()
            .unwrap_or(0);
        let plan = stage["stage_plan"].as_str().unwrap_or("");
        let what = if plan.contains("PartitionedSinkExec") {
            "shuffle read, embed(), write"
        } else if plan.contains("DataSourceExec") {
            "scan, hash the rows, shuffle write"
        } else {
            "gather the partitions' reports"
        };
        println!(
            "| {} | {what} | {} | {:.1} | {:.1} | {:.1} |",
            stage["stage_id"].as_str().unwrap_or("?"),
            tasks.len(),
            sum as f64 / 1000.0,
            max as f64 / 1000.0,
            last.saturating_sub(first) as f64 / 1000.0
        );
    }
    Ok(())
}
