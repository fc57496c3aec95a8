//! Quality measures shared by the parity tests and the throughput benchmark: cosine, Spearman
//! correlation and the STS Benchmark score of an [`Embedder`].

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::Embedder;

/// Cosine similarity, accumulated in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Ranks (1-based), ties sharing their average rank.
pub fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            r[idx[k]] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va.sqrt() * vb.sqrt())
}

/// Spearman's rank correlation.
pub fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

/// One STS-B pair: gold similarity (0-5) and the two sentences.
pub struct StsPair {
    pub score: f64,
    pub left: String,
    pub right: String,
}

/// Reads an STS-B TSV (`score`, `sentence1`, `sentence2`, header line, no quoting).
pub fn read_sts(path: &Path) -> Result<Vec<StsPair>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let parts: Vec<&str> = line.split('\t').collect();
        let (Some(score), [_, left, right, ..]) = (
            parts.first().and_then(|s| s.parse::<f64>().ok()),
            &parts[..],
        ) else {
            bail!(
                "{}: line {}: expected score<TAB>sentence1<TAB>sentence2",
                path.display(),
                n + 1
            );
        };
        pairs.push(StsPair {
            score,
            left: left.to_string(),
            right: right.to_string(),
        });
    }
    Ok(pairs)
}

/// Spearman correlation between the embedder's cosine similarities and the gold scores.
pub fn sts_spearman(embedder: &Embedder, pairs: &[StsPair]) -> Result<f64> {
    let rows: Vec<Option<&str>> = pairs
        .iter()
        .map(|p| Some(p.left.as_str()))
        .chain(pairs.iter().map(|p| Some(p.right.as_str())))
        .collect();
    let v = embedder.embed(&rows)?;
    let (d, n) = (embedder.dim(), pairs.len());
    let sims: Vec<f64> = (0..n)
        .map(|i| cosine(&v[i * d..(i + 1) * d], &v[(n + i) * d..(n + i + 1) * d]))
        .collect();
    let gold: Vec<f64> = pairs.iter().map(|p| p.score).collect();
    Ok(spearman(&sims, &gold))
}
