//! What fp32 inference could reach on this machine, so a benchmark can say how close a run came:
//! the cores' measured FMA throughput, and a BERT encoder's arithmetic per row (issue "Fast for
//! everyone": fp32 at 80% or more of the measured FMA ceiling on long texts).
#![allow(dead_code)] // not every benchmark uses every helper

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// fp32 FLOP/s of `threads` threads, each running independent FMA chains for `run` with the
/// widest FMA this CPU has (AVX-512, else AVX2), best of `tries`; with the kind of FMA used.
/// `None` where the CPU has neither (the benchmark then prints no ceiling).
pub fn fma_ceiling(threads: usize, run: Duration, tries: usize) -> Option<(f64, &'static str)> {
    #[cfg(target_arch = "x86_64")]
    {
        let kind = if std::arch::is_x86_feature_detected!("avx512f") {
            "AVX-512"
        } else if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
        {
            "AVX2"
        } else {
            return None;
        };
        let once = || -> f64 {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| s.spawn(move || x86::flops_for(kind, run)))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).sum()
            })
        };
        let best = (0..tries.max(1)).map(|_| once()).fold(0.0, f64::max);
        Some((best, kind))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, run, tries);
        None
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use std::arch::x86_64::*;

    /// Independent accumulators: more than FMA latency (4 cycles) x FMA pipes (up to 2), so the
    /// pipes never wait on a result.
    const CHAINS: usize = 12;
    const ROUNDS: u64 = 1 << 16;

    /// FLOP/s of one thread running FMAs of `kind` for about `run`.
    pub fn flops_for(kind: &str, run: Duration) -> f64 {
        let lanes = if kind == "AVX-512" { 16 } else { 8 };
        let start = Instant::now();
        let (mut rounds, mut sink) = (0u64, 0f32);
        while start.elapsed() < run {
            // SAFETY: `kind` was chosen from the features this CPU reports.
            sink += unsafe {
                if kind == "AVX-512" {
                    fma512(ROUNDS)
                } else {
                    fma256(ROUNDS)
                }
            };
            rounds += ROUNDS;
        }
        std::hint::black_box(sink);
        (rounds * CHAINS as u64 * lanes * 2) as f64 / start.elapsed().as_secs_f64()
    }

    #[target_feature(enable = "avx512f")]
    fn fma512(rounds: u64) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(*x, a, b);
            }
        }
        let sum = acc
            .into_iter()
            .fold(_mm512_setzero_ps(), |s, x| _mm512_add_ps(s, x));
        _mm512_reduce_add_ps(sum)
    }

    #[target_feature(enable = "avx2,fma")]
    fn fma256(rounds: u64) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..rounds {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(*x, a, b);
            }
        }
        let sum = acc
            .into_iter()
            .fold(_mm256_setzero_ps(), |s, x| _mm256_add_ps(s, x));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds the 8 floats the store writes.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        lanes.iter().sum()
    }
}

/// A BERT encoder's shape, from the model folder's `config.json`.
pub struct Encoder {
    layers: f64,
    hidden: f64,
    intermediate: f64,
}

impl Encoder {
    pub fn from_model(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| path.display().to_string())?,
        )?;
        let field = |k: &str| {
            config[k]
                .as_f64()
                .with_context(|| format!("{}: no {k}", path.display()))
        };
        Ok(Encoder {
            layers: field("num_hidden_layers")?,
            hidden: field("hidden_size")?,
            intermediate: field("intermediate_size")?,
        })
    }

    /// FLOPs of one row of `tokens` word pieces (padding not counted: it is not the text's
    /// work). Per layer and token: the Q, K, V and output projections (4 h^2 multiply-adds), the
    /// feed-forward (2 h f), and the attention products Q.K^T and softmax.V (2 h L for a row of
    /// L tokens); two FLOPs a multiply-add. all-MiniLM-L6-v2: 21.2 MFLOP a token plus 9,216 L.
    pub fn row_flop(&self, tokens: usize) -> f64 {
        let (l, h, f) = (tokens as f64, self.hidden, self.intermediate);
        self.layers * 2.0 * (l * (4.0 * h * h + 2.0 * h * f) + 2.0 * h * l * l)
    }
}
