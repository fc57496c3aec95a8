//! Fault injection and the connection loop.
//!
//! Each data-plane request first waits the added latency, then draws one fault: a dropped
//! connection (half before the request is applied, half after, as a real network drop can be
//! either), 429 with `Retry-After`, 500 or 503; otherwise it is served. A dropped connection is a
//! service error, on which hyper closes the socket without answering.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::limits::code;

/// Fault rates are probabilities per request, from 0 to 1; their sum must not exceed 1.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub rate_429: f64,
    pub rate_500: f64,
    pub rate_503: f64,
    pub rate_drop: f64,
    /// `Retry-After` seconds sent with 429s (none when `None`).
    pub retry_after_secs: Option<u64>,
    /// Latency added to every data-plane request.
    pub latency: Duration,
    /// Paths the faults apply to (e.g. `/vectors/upsert`); empty: every data-plane path.
    pub paths: Vec<String>,
}

/// Counts of faults injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub requests: u64,
    pub throttled: u64,
    pub internal: u64,
    pub unavailable: u64,
    pub dropped: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.throttled + self.internal + self.unavailable + self.dropped
    }
}

#[derive(Default)]
pub struct FaultInjector {
    faults: Faults,
    requests: AtomicU64,
    throttled: AtomicU64,
    internal: AtomicU64,
    unavailable: AtomicU64,
    dropped: AtomicU64,
}

enum Fault {
    None,
    DropBefore,
    DropAfter,
    Status(StatusCode),
}

impl FaultInjector {
    pub fn new(faults: Faults) -> FaultInjector {
        FaultInjector {
            faults,
            ..Default::default()
        }
    }

    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            requests: self.requests.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            internal: self.internal.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn draw(&self) -> Fault {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let f = &self.faults;
        let mut x: f64 = rand::rng().random();
        let mut hit = |rate: f64| {
            if x < rate {
                true
            } else {
                x -= rate;
                false
            }
        };
        if hit(f.rate_drop) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            if rand::rng().random::<bool>() {
                Fault::DropBefore
            } else {
                Fault::DropAfter
            }
        } else if hit(f.rate_429) {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            Fault::Status(StatusCode::TOO_MANY_REQUESTS)
        } else if hit(f.rate_500) {
            self.internal.fetch_add(1, Ordering::Relaxed);
            Fault::Status(StatusCode::INTERNAL_SERVER_ERROR)
        } else if hit(f.rate_503) {
            self.unavailable.fetch_add(1, Ordering::Relaxed);
            Fault::Status(StatusCode::SERVICE_UNAVAILABLE)
        } else {
            Fault::None
        }
    }

    fn fault_response(&self, status: StatusCode) -> Response {
        let (grpc, message) = match status {
            StatusCode::TOO_MANY_REQUESTS => (
                code::RESOURCE_EXHAUSTED,
                "Request failed. You've reached the max request rate for this index. Try again later.",
            ),
            StatusCode::SERVICE_UNAVAILABLE => (code::UNAVAILABLE, "Service unavailable"),
            _ => (code::INTERNAL, "Internal error"),
        };
        let mut resp = (
            status,
            axum::Json(json!({ "code": grpc, "message": message, "details": [] })),
        )
            .into_response();
        if status == StatusCode::TOO_MANY_REQUESTS
            && let Some(secs) = self.faults.retry_after_secs
            && let Ok(v) = HeaderValue::from_str(&secs.to_string())
        {
            resp.headers_mut().insert("retry-after", v);
        }
        resp
    }
}

async fn call(router: Router, req: axum::http::Request<Body>) -> Response {
    match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn dropped(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::ConnectionAborted, why.to_string())
}

/// Accepts connections on `listener` and serves `router`, injecting `faults` when given.
pub async fn serve(listener: TcpListener, router: Router, faults: Option<Arc<FaultInjector>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let router = router.clone();
        let faults = faults.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let router = router.clone();
                    let faults = faults.clone();
                    async move {
                        let req = req.map(Body::new);
                        let Some(faults) = faults else {
                            return Ok::<Response, std::io::Error>(call(router, req).await);
                        };
                        if !faults.faults.latency.is_zero() {
                            tokio::time::sleep(faults.faults.latency).await;
                        }
                        let targeted = faults.faults.paths.is_empty()
                            || faults.faults.paths.iter().any(|p| p == req.uri().path());
                        if !targeted {
                            return Ok(call(router, req).await);
                        }
                        match faults.draw() {
                            Fault::None => Ok(call(router, req).await),
                            Fault::Status(s) => Ok(faults.fault_response(s)),
                            Fault::DropBefore => Err(dropped("injected: connection dropped")),
                            Fault::DropAfter => {
                                let _ = call(router, req).await;
                                Err(dropped("injected: connection dropped after the request"))
                            }
                        }
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
