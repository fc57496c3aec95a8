//! SIGINT and SIGTERM, handled alike, as schedulers send them (Airflow, Kubernetes and systemd
//! stop a task with SIGTERM): the first asks the command to stop cleanly (a run aborts its
//! output, removes staging files and prints one message); a second exits at once.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::error::exit;

/// The signal that asked the process to stop (0: none yet), readable from any thread without a
/// runtime: `embed()` looks at it between micro-batches, so a stop does not wait for the whole
/// record batch being embedded.
static REQUESTED: AtomicU8 = AtomicU8::new(0);

const SIGINT_SEEN: u8 = 1;
const SIGTERM_SEEN: u8 = 2;

/// The signal that asked this process to stop, if one has: cheap enough for an inner loop.
pub fn stop_requested() -> Option<&'static str> {
    match REQUESTED.load(Ordering::Relaxed) {
        SIGINT_SEEN => Some("SIGINT"),
        SIGTERM_SEEN => Some("SIGTERM"),
        _ => None,
    }
}

/// How long a driver waits for its plan runtime to wind down. `embed()` gives up at its next
/// micro-batch after a signal or once the run is abandoned (a failure elsewhere), so the wait
/// ends in a fraction of a second; this bounds it: a few seconds after a signal, otherwise long
/// enough for a micro-batch of long texts on a slow CPU, so ONNX Runtime is idle when the
/// process exits.
pub fn plan_shutdown_wait() -> std::time::Duration {
    match stop_requested() {
        Some(_) => std::time::Duration::from_secs(5),
        None => std::time::Duration::from_secs(30),
    }
}

/// Which signal asked the process to stop, once one has.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<Option<&'static str>>,
}

impl Shutdown {
    /// Listens for SIGINT and SIGTERM on the current runtime.
    pub fn install() -> std::io::Result<Shutdown> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            loop {
                let name = tokio::select! {
                    Some(()) = interrupt.recv() => "SIGINT",
                    Some(()) = terminate.recv() => "SIGTERM",
                    else => return,
                };
                if tx.borrow().is_some() {
                    let _ = writeln!(std::io::stderr(), "error: {name} again: exiting at once");
                    exit_now(code(name));
                }
                tracing::warn!("{name} received: stopping (send it again to exit at once)");
                let seen = if name == "SIGINT" {
                    SIGINT_SEEN
                } else {
                    SIGTERM_SEEN
                };
                REQUESTED.store(seen, Ordering::Relaxed);
                tx.send_replace(Some(name));
            }
        });
        Ok(Shutdown { rx })
    }

    /// A handle that never fires (library callers, tests).
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(None);
        std::mem::forget(tx);
        Shutdown { rx }
    }

    /// Resolves with the signal's name once one arrives.
    pub async fn requested(&mut self) -> &'static str {
        // The value is copied out, so the watch's guard is not held across an await.
        let name = match self.rx.wait_for(Option::is_some).await {
            Ok(name) => Some(name.unwrap_or("SIGTERM")),
            Err(_) => None,
        };
        match name {
            Some(name) => name,
            None => std::future::pending().await,
        }
    }

    /// Runs `fut` until it ends or a signal arrives.
    pub async fn until<T>(
        &self,
        fut: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let mut me = self.clone();
        tokio::select! {
            r = fut => r,
            signal = me.requested() => Err(crate::error::Interrupted {
                signal,
                outcome: "stopped".into(),
            }
            .into()),
        }
    }
}

/// The exit code for a signal's name.
pub fn code(name: &str) -> i32 {
    if name == "SIGINT" {
        exit::SIGINT
    } else {
        exit::SIGTERM
    }
}

/// Exits without running destructors (a second signal, or ONNX Runtime still busy on another
/// thread), after flushing what was printed.
pub fn exit_now(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; nothing runs after it.
    unsafe { libc::_exit(code) }
}
