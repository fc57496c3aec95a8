//! Delivering one upsert request: retries with exponential backoff and jitter (at least the
//! server's `Retry-After`), feedback to the concurrency limit, splitting on "too large".
//!
//! Only the failed request is retried. A request whose retries run out comes back as failed,
//! for the dead-letter file; a final error (400, 401...) stops the run with Pinecone's message
//! and the ids involved.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use futures::future::BoxFuture;

use super::batcher::UpsertBatch;
use super::client::{CallError, PineconeClient};
use super::concurrency::AdaptiveConcurrency;

/// What every delivery shares.
pub struct Shared {
    pub client: PineconeClient,
    pub limiter: AdaptiveConcurrency,
    pub max_retries: usize,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub splits: AtomicU64,
}

/// What became of one request.
#[derive(Default)]
pub struct Delivery {
    pub landed: u64,
    /// Records whose retries ran out, with the last error.
    pub failed: Vec<(UpsertBatch, String)>,
}

fn backoff(max_retries: usize) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(20))
        .with_factor(2.0)
        .with_jitter()
        .with_max_times(max_retries)
}

/// One HTTP attempt, reporting its outcome to the concurrency limit.
async fn attempt(shared: &Shared, body: Bytes) -> std::result::Result<u64, CallError> {
    if let Some(wait) = shared.limiter.wait_time() {
        tokio::time::sleep(wait).await;
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    match shared.client.post("/vectors/upsert", body).await {
        Ok(answer) => {
            shared.limiter.on_success(start.elapsed());
            Ok(answer
                .get("upsertedCount")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0))
        }
        Err(e) => {
            if let CallError::Backpressure { retry_after, .. } = &e {
                shared.limiter.on_backpressure(*retry_after);
            }
            Err(e)
        }
    }
}

/// Sends `batch`, retrying what may be retried and splitting what is too large.
pub fn deliver(shared: Arc<Shared>, batch: UpsertBatch) -> BoxFuture<'static, Result<Delivery>> {
    Box::pin(async move {
        let body = batch.body();
        let result = (|| attempt(&shared, body.clone()))
            .retry(backoff(shared.max_retries))
            .when(CallError::retryable)
            .adjust(|e: &CallError, next: Option<Duration>| {
                next.map(|d| e.retry_after().map_or(d, |r| r.max(d)))
            })
            .notify(|e: &CallError, wait: Duration| {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "upsert of {} vectors failed ({e}); retrying in {:.2} s",
                    batch.len(),
                    wait.as_secs_f64()
                );
            })
            .await;
        match result {
            Ok(n) => {
                if n != batch.len() as u64 {
                    tracing::warn!(
                        "Pinecone reported {n} vectors upserted for a request of {}",
                        batch.len()
                    );
                }
                Ok(Delivery {
                    landed: batch.len() as u64,
                    failed: Vec::new(),
                })
            }
            Err(CallError::TooLarge(msg)) if batch.len() > 1 => {
                shared.splits.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    "upsert of {} vectors too large ({msg}); splitting",
                    batch.len()
                );
                let (a, b) = batch.split();
                let first = deliver(Arc::clone(&shared), a).await?;
                let second = deliver(shared, b).await?;
                Ok(Delivery {
                    landed: first.landed + second.landed,
                    failed: first.failed.into_iter().chain(second.failed).collect(),
                })
            }
            Err(e) if e.retryable() => {
                tracing::warn!(
                    "upsert of {} gave up after {} retries: {e}",
                    batch.sample_ids(3),
                    shared.max_retries
                );
                Ok(Delivery {
                    landed: 0,
                    failed: vec![(batch, e.to_string())],
                })
            }
            Err(e) => Err(anyhow!(
                "Pinecone refused an upsert of {}: {e}",
                batch.sample_ids(5)
            )),
        }
    })
}
