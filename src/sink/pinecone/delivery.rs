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
use super::client::{CallError, PineconeClient, UpsertResponse};
use super::concurrency::AdaptiveConcurrency;

/// What every delivery shares.
pub struct Shared {
    pub client: PineconeClient,
    pub limiter: AdaptiveConcurrency,
    pub max_retries: usize,
    pub health: Health,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub splits: AtomicU64,
}

/// Whether the index still answers: once every request has failed for `give_up_after`, the
/// index counts as unreachable, deliveries stop retrying and the writer stops taking rows.
pub struct Health {
    give_up_after: Duration,
    state: std::sync::Mutex<HealthState>,
    dead: tokio::sync::watch::Sender<bool>,
}

struct HealthState {
    /// The first failure since the last success.
    failing_since: Option<Instant>,
    last_error: String,
}

impl Health {
    pub fn new(give_up_after: Duration) -> Health {
        Health {
            give_up_after,
            state: std::sync::Mutex::new(HealthState {
                failing_since: None,
                last_error: String::new(),
            }),
            dead: tokio::sync::watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn succeeded(&self) {
        self.lock().failing_since = None;
    }

    fn failed(&self, error: &CallError) {
        let mut s = self.lock();
        let since = *s.failing_since.get_or_insert_with(Instant::now);
        s.last_error = error.to_string();
        if since.elapsed() >= self.give_up_after {
            self.dead.send_replace(true);
        }
    }

    pub fn is_dead(&self) -> bool {
        *self.dead.borrow()
    }

    /// How long requests have been failing, and the last error.
    pub fn failing(&self) -> (Duration, String) {
        let s = self.lock();
        (
            s.failing_since.map(|t| t.elapsed()).unwrap_or_default(),
            s.last_error.clone(),
        )
    }

    /// Resolves when the index is declared unreachable.
    async fn gone(&self) {
        let mut rx = self.dead.subscribe();
        let _ = rx.wait_for(|dead| *dead).await;
    }
}

/// What became of one request.
#[derive(Default)]
pub struct Delivery {
    pub landed: u64,
    /// The ids of the vectors that landed.
    pub landed_ids: Vec<String>,
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
    match shared
        .client
        .post::<UpsertResponse>("/vectors/upsert", body)
        .await
    {
        Ok(answer) => {
            shared.limiter.on_success(start.elapsed());
            shared.health.succeeded();
            Ok(answer.upserted_count)
        }
        Err(e) => {
            if let CallError::Backpressure { retry_after, .. } = &e {
                shared.limiter.on_backpressure(*retry_after);
            }
            shared.health.failed(&e);
            Err(e)
        }
    }
}

/// Sends `batch`, retrying what may be retried and splitting what is too large.
pub fn deliver(shared: Arc<Shared>, batch: UpsertBatch) -> BoxFuture<'static, Result<Delivery>> {
    Box::pin(async move {
        let body = batch.body();
        let retried = (|| attempt(&shared, body.clone()))
            .retry(backoff(shared.max_retries))
            .when(|e: &CallError| e.retryable() && !shared.health.is_dead())
            .adjust(CallError::honour_retry_after)
            .notify(|e: &CallError, wait: Duration| {
                shared.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    vectors = batch.len(),
                    error = %e,
                    "upsert of {} vectors failed ({e}); retrying in {:.2} s",
                    batch.len(),
                    wait.as_secs_f64()
                );
            });
        let result = tokio::select! {
            r = retried => r,
            () = shared.health.gone() => Err(CallError::Transient(
                "not sent: the index was unreachable".into(),
            )),
        };
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
                    landed_ids: batch.records.iter().map(|r| r.id.clone()).collect(),
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
                    landed_ids: first
                        .landed_ids
                        .into_iter()
                        .chain(second.landed_ids)
                        .collect(),
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
                    landed_ids: Vec::new(),
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
