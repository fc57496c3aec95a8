//! `src/sink/pinecone/concurrency.rs`

use embedflow::sink::pinecone::concurrency::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
