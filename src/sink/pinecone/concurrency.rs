//! Adaptive request concurrency, after Vector's controller: additive increase while healthy and
//! limited by the current limit, multiplicative decrease on backpressure (429, 503, timeouts) or
//! when latency climbs well above its baseline.
//!
//! - A semaphore holds the limit: a request takes a permit before it starts and gives it back
//!   when it ends, retries included. Lowering the limit retires permits as they come back.
//! - The limit grows by one after a full window of successes, and only if requests were held
//!   back by it in that window: an idle writer does not raise a limit it never reached.
//! - Backpressure halves the limit, at most once per round trip, so a burst of 429s from requests
//!   that were already in flight counts as one signal.
//! - A round trip over twice the smoothed baseline cuts the limit by a quarter (same rule).
//! - `Retry-After` closes a gate: no request starts before the time the server named.
//! - Never below 1, never above the configured bound.
//! - Time comes from a [`Clock`], so the tests run on a clock they move themselves.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const START: usize = 4;
/// Round trips before latency is trusted as a baseline.
const WARMUP_SAMPLES: u32 = 8;
const LATENCY_FACTOR: f64 = 2.0;

/// Where the controller reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

#[derive(Debug)]
struct State {
    limit: usize,
    in_flight: usize,
    /// Permits to retire as they come back (the limit was lowered below what is in flight).
    to_retire: usize,
    successes: usize,
    /// Whether requests reached the limit since it last changed.
    limited: bool,
    /// Smoothed round trip, seconds.
    baseline: Option<f64>,
    samples: u32,
    last_decrease: Option<Instant>,
    not_before: Option<Instant>,
    peak: usize,
    decreases: u64,
}

#[derive(Debug)]
struct Inner {
    max: usize,
    semaphore: Arc<Semaphore>,
    state: Mutex<State>,
    clock: Arc<dyn Clock>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Clone)]
pub struct AdaptiveConcurrency {
    inner: Arc<Inner>,
}

/// One request's slot; it goes back (or is retired) when dropped.
#[derive(Debug)]
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    inner: Arc<Inner>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        s.in_flight -= 1;
        if let Some(p) = self.permit.take()
            && s.to_retire > 0
        {
            s.to_retire -= 1;
            p.forget();
        }
    }
}

impl AdaptiveConcurrency {
    pub fn new(max: usize) -> AdaptiveConcurrency {
        Self::with_clock(max, Arc::new(SystemClock))
    }

    pub fn with_clock(max: usize, clock: Arc<dyn Clock>) -> AdaptiveConcurrency {
        let max = max.max(1);
        let start = START.min(max);
        AdaptiveConcurrency {
            inner: Arc::new(Inner {
                max,
                semaphore: Arc::new(Semaphore::new(start)),
                state: Mutex::new(State {
                    limit: start,
                    in_flight: 0,
                    to_retire: 0,
                    successes: 0,
                    limited: false,
                    baseline: None,
                    samples: 0,
                    last_decrease: None,
                    not_before: None,
                    peak: start,
                    decreases: 0,
                }),
                clock,
            }),
        }
    }

    /// Waits for a free slot under the current limit.
    pub async fn acquire(&self) -> Permit {
        let permit = Arc::clone(&self.inner.semaphore)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        self.admitted(permit)
    }

    /// A slot if one is free now.
    /// A permit if one is free now (tests).
    pub fn try_acquire(&self) -> Option<Permit> {
        let permit = Arc::clone(&self.inner.semaphore).try_acquire_owned().ok()?;
        Some(self.admitted(permit))
    }

    fn admitted(&self, permit: OwnedSemaphorePermit) -> Permit {
        let mut s = self.inner.lock();
        s.in_flight += 1;
        if s.in_flight >= s.limit {
            s.limited = true;
        }
        Permit {
            permit: Some(permit),
            inner: Arc::clone(&self.inner),
        }
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.inner.lock().limit
    }

    /// (highest limit reached, number of decreases), for the summary.
    pub fn stats(&self) -> (usize, u64) {
        let s = self.inner.lock();
        (s.peak, s.decreases)
    }

    /// How long a new attempt must wait for a server-named `Retry-After` to pass.
    pub fn wait_time(&self) -> Option<Duration> {
        let now = self.inner.clock.now();
        let s = self.inner.lock();
        s.not_before.and_then(|t| t.checked_duration_since(now))
    }

    pub fn on_success(&self, rtt: Duration) {
        let rtt = rtt.as_secs_f64();
        let now = self.inner.clock.now();
        let mut s = self.inner.lock();
        let slow =
            s.samples >= WARMUP_SAMPLES && s.baseline.is_some_and(|b| rtt > LATENCY_FACTOR * b);
        s.baseline = Some(match s.baseline {
            None => rtt,
            Some(b) => 0.9 * b + 0.1 * rtt,
        });
        s.samples = s.samples.saturating_add(1);
        if slow {
            self.decrease(&mut s, 0.75, now);
            return;
        }
        s.successes += 1;
        if s.successes >= s.limit {
            s.successes = 0;
            if s.limited && s.limit < self.inner.max {
                let next = s.limit + 1;
                self.set_limit(&mut s, next);
                s.peak = s.peak.max(s.limit);
            }
            s.limited = s.in_flight >= s.limit;
        }
    }

    /// A 429, 503 or timeout; `retry_after` closes the gate until then.
    pub fn on_backpressure(&self, retry_after: Option<Duration>) {
        let now = self.inner.clock.now();
        let mut s = self.inner.lock();
        if let Some(d) = retry_after {
            let until = now + d;
            s.not_before = Some(s.not_before.map_or(until, |t| t.max(until)));
        }
        self.decrease(&mut s, 0.5, now);
    }

    fn decrease(&self, s: &mut State, factor: f64, now: Instant) {
        let epoch = Duration::from_secs_f64(s.baseline.unwrap_or(0.05).max(0.01));
        if s.last_decrease
            .is_some_and(|t| now.duration_since(t) < epoch)
        {
            return;
        }
        s.last_decrease = Some(now);
        let lower = ((s.limit as f64 * factor).floor() as usize).max(1);
        self.set_limit(s, lower);
        s.successes = 0;
        s.limited = false;
        s.decreases += 1;
    }

    /// Moves the semaphore to `limit` permits: new ones are added at once; removed ones are
    /// taken from the free pool, or retired when requests in flight give theirs back.
    fn set_limit(&self, s: &mut State, limit: usize) {
        if limit > s.limit {
            let mut grow = limit - s.limit;
            let cancelled = grow.min(s.to_retire);
            s.to_retire -= cancelled;
            grow -= cancelled;
            self.inner.semaphore.add_permits(grow);
        } else {
            let mut shrink = s.limit - limit;
            while shrink > 0 {
                match self.inner.semaphore.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        shrink -= 1;
                    }
                    Err(_) => break,
                }
            }
            s.to_retire += shrink;
        }
        s.limit = limit;
    }
}
