//! Retrieval quality on BEIR SciFact (`../shared/data/scifact`: 5,183 abstracts, 300 test
//! queries, qrels; CC BY-NC, so it stays out of the repository), through what a user runs: one
//! `embedflow run` (all-MiniLM-L6-v2, `embed.sparse: bm25`, a Parquet output), then one
//! `embedflow query --queries` per setting: dense alone (`--alpha 1`; MiniLM's published
//! nDCG@10 on SciFact is 0.645), BM25 alone (`--alpha 0`) and hybrid at several alphas. Prints
//! nDCG@10 (BEIR's definition: graded gains from the qrels, log2 discount, ideal DCG from the
//! qrels) and Recall@100 for each, with the wall time of each command.
//!
//!     cargo bench --bench retrieval [-- --alphas 0,0.3,0.5,0.7,0.8,0.9,1]

#[allow(dead_code)]
mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;

fn embedflow(dir: &Path, args: &[&str]) -> Result<(std::process::Output, f64)> {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_embedflow"))
        .args(args)
        .current_dir(dir)
        .output()
        .context("start embedflow")?;
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "embedflow {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((out, secs))
}

fn alphas() -> Vec<f32> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--alphas") {
        Some(i) => args[i + 1]
            .split(',')
            .map(|a| a.trim().parse().expect("--alphas a,b,c"))
            .collect(),
        None => vec![1.0, 0.0, 0.3, 0.5, 0.7, 0.8, 0.9],
    }
}

fn main() -> Result<()> {
    let Some(shared) = support::corpus::shared_dir() else {
        println!("SKIPPED: retrieval benchmark: ../shared/data/scifact is not here");
        return Ok(());
    };
    let scifact = shared.join("data/scifact");
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // The corpus as a table: BEIR embeds title and text joined by a space.
    let mut ids = Vec::new();
    let mut texts = Vec::new();
    for line in std::fs::read_to_string(scifact.join("corpus.jsonl"))?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        ids.push(v["_id"].as_str().context("_id")?.to_string());
        let title = v["title"].as_str().unwrap_or("");
        let text = v["text"].as_str().unwrap_or("");
        texts.push(format!("{title} {text}").trim().to_string());
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(ids.clone())) as ArrayRef,
            Arc::new(StringArray::from(texts)),
        ],
    )?;
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(d.join("corpus.parquet"))?,
        schema,
        None,
    )?;
    w.write(&batch)?;
    w.close()?;
    // The test queries and their relevant documents.
    let mut queries = std::fs::File::create(d.join("queries.jsonl"))?;
    let mut qrels: HashMap<String, HashMap<String, f64>> = HashMap::new();
    for line in std::fs::read_to_string(scifact.join("qrels/test.tsv"))?
        .lines()
        .skip(1)
    {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() == 3 {
            qrels
                .entry(f[0].to_string())
                .or_default()
                .insert(f[1].to_string(), f[2].parse()?);
        }
    }
    let mut n_queries = 0;
    for line in std::fs::read_to_string(scifact.join("queries_test.jsonl"))?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let id = v["_id"].as_str().context("_id")?;
        if qrels.contains_key(id) {
            writeln!(
                queries,
                "{}",
                serde_json::json!({"id": id, "text": v["text"]})
            )?;
            n_queries += 1;
        }
    }
    std::fs::write(
        d.join("scifact.yaml"),
        "source:\n  tables:\n    docs: { path: corpus.parquet }\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  sparse: bm25\nsink:\n  parquet: { path: vectors.parquet }\n",
    )?;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "BEIR SciFact: {} documents, {n_queries} test queries; CPU: {cpu}",
        ids.len()
    );
    let (_, secs) = embedflow(d, &["run", "scifact.yaml", "--no-progress"])?;
    println!("embedflow run (dense + BM25, fitted on the corpus): {secs:.1} s");
    println!("| setting | alpha | nDCG@10 | Recall@100 | query s |");
    println!("|---|---|---|---|---|");
    for alpha in alphas() {
        let a = alpha.to_string();
        let (out, secs) = embedflow(
            d,
            &[
                "query",
                "scifact.yaml",
                "--queries",
                "queries.jsonl",
                "-k",
                "100",
                "--alpha",
                &a,
            ],
        )?;
        let mut ranked: HashMap<String, Vec<(f64, String)>> = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(line)?;
            ranked
                .entry(v["query_id"].as_str().context("query_id")?.to_string())
                .or_default()
                .push((
                    v["score"].as_f64().unwrap_or(0.0),
                    v["id"].as_str().unwrap_or("").to_string(),
                ));
        }
        let (mut ndcg, mut recall) = (0.0, 0.0);
        for (q, rel) in &qrels {
            let mut list = ranked.remove(q).unwrap_or_default();
            list.sort_by(|a, b| b.0.total_cmp(&a.0));
            let dcg: f64 = list
                .iter()
                .take(10)
                .enumerate()
                .map(|(i, (_, id))| rel.get(id).copied().unwrap_or(0.0) / ((i + 2) as f64).log2())
                .sum();
            let mut ideal: Vec<f64> = rel.values().copied().collect();
            ideal.sort_by(|a, b| b.total_cmp(a));
            let idcg: f64 = ideal
                .iter()
                .take(10)
                .enumerate()
                .map(|(i, g)| g / ((i + 2) as f64).log2())
                .sum();
            ndcg += if idcg > 0.0 { dcg / idcg } else { 0.0 };
            let found: HashSet<&String> = list.iter().take(100).map(|(_, id)| id).collect();
            let relevant = rel.iter().filter(|(_, g)| **g > 0.0).count().max(1);
            recall += rel.keys().filter(|id| found.contains(id)).count() as f64 / relevant as f64;
        }
        let n = qrels.len() as f64;
        let setting = match alpha {
            a if a >= 1.0 => "dense (MiniLM)",
            a if a <= 0.0 => "BM25",
            _ => "hybrid",
        };
        println!(
            "| {setting} | {alpha} | {:.3} | {:.3} | {secs:.1} |",
            ndcg / n,
            recall / n
        );
    }
    Ok(())
}
