//! Adaptive request concurrency, after Vector's: additive increase while healthy, multiplicative
//! decrease on backpressure (429, 503, timeouts) or when latency climbs well above its baseline.
//!
//! - Starts low and grows by one each time a full window of the current limit succeeds.
//! - Backpressure halves the limit, at most once per round trip, so a burst of 429s from requests
//!   that were already in flight counts as one signal.
//! - A round trip over twice the smoothed baseline cuts the limit by a quarter (same rule).
//! - `Retry-After` closes a gate: no request starts before the time the server named.
//! - Never below 1, never above the configured bound.

use std::sync::Mutex;
use std::time::{Duration, Instant};

const START: usize = 4;
/// Round trips before latency is trusted as a baseline.
const WARMUP_SAMPLES: u32 = 8;
const LATENCY_FACTOR: f64 = 2.0;

#[derive(Debug)]
struct State {
    limit: usize,
    successes: usize,
    /// Smoothed round trip, seconds.
    baseline: Option<f64>,
    samples: u32,
    last_decrease: Option<Instant>,
    not_before: Option<Instant>,
    peak: usize,
    decreases: u64,
}

#[derive(Debug)]
pub struct AdaptiveConcurrency {
    max: usize,
    state: Mutex<State>,
}

impl AdaptiveConcurrency {
    pub fn new(max: usize) -> AdaptiveConcurrency {
        let start = START.min(max).max(1);
        AdaptiveConcurrency {
            max,
            state: Mutex::new(State {
                limit: start,
                successes: 0,
                baseline: None,
                samples: 0,
                last_decrease: None,
                not_before: None,
                peak: start,
                decreases: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// (highest limit reached, number of decreases), for the summary.
    pub fn stats(&self) -> (usize, u64) {
        let s = self.lock();
        (s.peak, s.decreases)
    }

    /// How long a new attempt must wait for a server-named `Retry-After` to pass.
    pub fn wait_time(&self) -> Option<Duration> {
        let s = self.lock();
        s.not_before
            .and_then(|t| t.checked_duration_since(Instant::now()))
    }

    pub fn on_success(&self, rtt: Duration) {
        let rtt = rtt.as_secs_f64();
        let mut s = self.lock();
        let slow =
            s.samples >= WARMUP_SAMPLES && s.baseline.is_some_and(|b| rtt > LATENCY_FACTOR * b);
        s.baseline = Some(match s.baseline {
            None => rtt,
            Some(b) => 0.9 * b + 0.1 * rtt,
        });
        s.samples = s.samples.saturating_add(1);
        if slow {
            Self::decrease(&mut s, 0.75);
            return;
        }
        s.successes += 1;
        if s.successes >= s.limit && s.limit < self.max {
            s.limit += 1;
            s.successes = 0;
            s.peak = s.peak.max(s.limit);
        }
    }

    /// A 429, 503 or timeout; `retry_after` closes the gate until then.
    pub fn on_backpressure(&self, retry_after: Option<Duration>) {
        let mut s = self.lock();
        if let Some(d) = retry_after {
            let until = Instant::now() + d;
            s.not_before = Some(s.not_before.map_or(until, |t| t.max(until)));
        }
        Self::decrease(&mut s, 0.5);
    }

    fn decrease(s: &mut State, factor: f64) {
        let epoch = Duration::from_secs_f64(s.baseline.unwrap_or(0.05).max(0.01));
        if s.last_decrease.is_some_and(|t| t.elapsed() < epoch) {
            return;
        }
        s.last_decrease = Some(Instant::now());
        s.limit = ((s.limit as f64 * factor).floor() as usize).max(1);
        s.successes = 0;
        s.decreases += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_while_healthy_and_halves_on_backpressure() {
        let c = AdaptiveConcurrency::new(16);
        assert_eq!(c.limit(), 4);
        for _ in 0..200 {
            c.on_success(Duration::from_millis(20));
        }
        assert_eq!(c.limit(), 16, "grows to the bound, not past it");
        c.on_backpressure(None);
        assert_eq!(c.limit(), 8);
        // A second signal within the same round trip is the same event.
        c.on_backpressure(None);
        assert_eq!(c.limit(), 8);
        std::thread::sleep(Duration::from_millis(30));
        c.on_backpressure(Some(Duration::from_millis(200)));
        assert_eq!(c.limit(), 4);
        assert!(
            c.wait_time()
                .is_some_and(|d| d > Duration::from_millis(100))
        );
    }

    #[test]
    fn backs_off_when_latency_climbs() {
        let c = AdaptiveConcurrency::new(16);
        for _ in 0..100 {
            c.on_success(Duration::from_millis(10));
        }
        let before = c.limit();
        c.on_success(Duration::from_millis(100));
        assert!(c.limit() < before, "{} !< {before}", c.limit());
        assert!(c.limit() >= 1);
    }
}
