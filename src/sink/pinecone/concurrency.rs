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
    #[cfg(test)]
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
    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock the test moves.
    #[derive(Debug)]
    struct ManualClock(Mutex<Instant>);

    impl ManualClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    fn controller(max: usize) -> (AdaptiveConcurrency, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock(Mutex::new(Instant::now())));
        (AdaptiveConcurrency::with_clock(max, clock.clone()), clock)
    }

    /// `rounds` windows of requests, `width` at a time, each succeeding after `rtt`.
    fn busy(c: &AdaptiveConcurrency, clock: &ManualClock, rounds: usize, width: usize, rtt: u64) {
        for _ in 0..rounds {
            let permits: Vec<Permit> = (0..width).map_while(|_| c.try_acquire()).collect();
            clock.advance(Duration::from_millis(rtt));
            for p in permits {
                c.on_success(Duration::from_millis(rtt));
                drop(p);
            }
        }
    }

    #[test]
    fn grows_only_when_requests_are_held_back_by_the_limit() {
        let (c, clock) = controller(16);
        assert_eq!(c.limit(), 4);
        // One request at a time never reaches the limit of 4: no reason to raise it.
        busy(&c, &clock, 200, 1, 20);
        assert_eq!(c.limit(), 4);
        // As many requests as there are slots: the limit is what holds them back, so it grows,
        // up to the bound and not past it.
        busy(&c, &clock, 400, 64, 20);
        assert_eq!(c.limit(), 16);
        assert_eq!(c.stats().0, 16);
    }

    #[test]
    fn the_semaphore_holds_the_limit_and_a_cut_retires_permits_in_flight() {
        let (c, clock) = controller(8);
        let held: Vec<Permit> = (0..4).map(|_| c.try_acquire().unwrap()).collect();
        assert!(
            c.try_acquire().is_none(),
            "a fifth request past a limit of 4"
        );
        c.on_backpressure(None);
        assert_eq!(c.limit(), 2);
        drop(held);
        // Two of the four permits were retired on their way back.
        let again: Vec<Permit> = (0..4).map_while(|_| c.try_acquire()).collect();
        assert_eq!(again.len(), 2);
        drop(again);
        clock.advance(Duration::from_secs(1));
        c.on_backpressure(None);
        assert_eq!(c.limit(), 1);
        assert!(c.try_acquire().is_some());
    }

    #[test]
    fn halves_once_per_round_trip_and_honours_retry_after() {
        let (c, clock) = controller(16);
        busy(&c, &clock, 400, 64, 20);
        assert_eq!(c.limit(), 16);
        c.on_backpressure(None);
        assert_eq!(c.limit(), 8);
        // A second signal within the same round trip is the same event.
        clock.advance(Duration::from_millis(5));
        c.on_backpressure(None);
        assert_eq!(c.limit(), 8);
        clock.advance(Duration::from_millis(30));
        c.on_backpressure(Some(Duration::from_millis(200)));
        assert_eq!(c.limit(), 4);
        assert_eq!(c.wait_time(), Some(Duration::from_millis(200)));
        clock.advance(Duration::from_millis(150));
        assert_eq!(c.wait_time(), Some(Duration::from_millis(50)));
        clock.advance(Duration::from_millis(60));
        assert_eq!(c.wait_time(), None);
        assert_eq!(c.stats().1, 2);
    }

    #[test]
    fn backs_off_when_latency_climbs() {
        let (c, clock) = controller(16);
        busy(&c, &clock, 100, 64, 10);
        let before = c.limit();
        c.on_success(Duration::from_millis(100));
        assert!(c.limit() < before, "{} !< {before}", c.limit());
        assert!(c.limit() >= 1);
    }
}
