//! A lock beside an output, so two runs of one pipeline never write it at the same time.
//!
//! The lock is an object created with object_store's create-only put (`O_EXCL`-like on a local
//! disk, `If-None-Match: *` on S3), holding who took it: host, pid, start time, and a heartbeat
//! the holder rewrites while it runs. A second run finds it and stops, naming the holder. A lock
//! whose holder crashed does not stay stuck: on the same host a holder whose process is gone is
//! taken over at once; elsewhere, once its heartbeat is older than [`STALE_AFTER`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions};
use serde::{Deserialize, Serialize};

/// A holder that has not renewed its heartbeat for this long is presumed gone.
pub const STALE_AFTER: Duration = Duration::from_secs(90);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(20);

/// Who holds a lock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    /// Unix seconds of the last renewal.
    pub heartbeat: u64,
}

impl Holder {
    pub fn me(started: u64) -> Holder {
        Holder {
            host: hostname(),
            pid: std::process::id(),
            started,
            heartbeat: unix_now(),
        }
    }

    /// True when the holder is certainly or presumably gone.
    pub fn is_stale(&self) -> bool {
        if self.host == hostname() && !process_alive(self.pid) {
            return true;
        }
        unix_now().saturating_sub(self.heartbeat) > STALE_AFTER.as_secs()
    }

    fn describe(&self) -> String {
        format!(
            "host {}, pid {}, started {} (last heartbeat {} s ago)",
            self.host,
            self.pid,
            rfc3339(self.started),
            unix_now().saturating_sub(self.heartbeat)
        )
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2026-11-29T03:01:25Z` from unix seconds (UTC, proleptic Gregorian).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Another run holds the lock.
#[derive(Debug)]
pub struct Locked {
    pub lock: String,
    pub holder: String,
}

impl std::fmt::Display for Locked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "another embedflow run is writing this output ({}; lock {}); wait for it to finish, or, if that run is gone, delete the lock",
            self.holder, self.lock
        )
    }
}

impl std::error::Error for Locked {}

/// A held lock; released by [`OutputLock::release`] (a dropped lock stops its heartbeat and is
/// then reclaimed as stale).
#[derive(Debug)]
pub struct OutputLock {
    store: Arc<dyn ObjectStore>,
    path: Path,
    display: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl OutputLock {
    /// Takes the lock at `path`, or fails with [`Locked`] naming the holder.
    pub async fn acquire(
        store: Arc<dyn ObjectStore>,
        path: Path,
        display: String,
    ) -> Result<OutputLock> {
        let started = unix_now();
        for attempt in 0..2 {
            let me = Holder::me(started);
            let body = serde_json::to_vec(&me)?;
            let create = PutOptions::from(PutMode::Create);
            match store.put_opts(&path, body.into(), create).await {
                Ok(_) => {
                    let heartbeat = tokio::spawn(renew(Arc::clone(&store), path.clone(), started));
                    return Ok(OutputLock {
                        store,
                        path,
                        display,
                        heartbeat,
                    });
                }
                Err(object_store::Error::AlreadyExists { .. }) if attempt == 0 => {
                    let holder = read_holder(store.as_ref(), &path).await;
                    let shown = display.clone();
                    match holder {
                        Some(h) if !h.is_stale() => {
                            return Err(Locked {
                                lock: display,
                                holder: h.describe(),
                            }
                            .into());
                        }
                        Some(h) => tracing::warn!(
                            "taking over the lock {} of a run that is gone ({})",
                            shown,
                            h.describe()
                        ),
                        None => {
                            tracing::warn!("replacing the unreadable lock {shown}")
                        }
                    }
                    store
                        .delete(&path)
                        .await
                        .map_err(|e| anyhow!("cannot remove the stale lock {display}: {e}"))?;
                }
                Err(object_store::Error::AlreadyExists { .. }) => {
                    let holder = read_holder(store.as_ref(), &path)
                        .await
                        .map(|h| h.describe())
                        .unwrap_or_else(|| "a run that started at the same moment".into());
                    return Err(Locked {
                        lock: display,
                        holder,
                    }
                    .into());
                }
                Err(e) => bail!("cannot take the lock {display}: {e}"),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Removes the lock (best effort: a lock that cannot be removed goes stale).
    pub async fn release(self) {
        self.heartbeat.abort();
        if let Err(e) = self.store.delete(&self.path).await {
            tracing::warn!("cannot remove the lock {}: {e}", self.display);
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

async fn read_holder(store: &dyn ObjectStore, path: &Path) -> Option<Holder> {
    let bytes = store.get(path).await.ok()?.bytes().await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Rewrites the heartbeat while the run goes on.
async fn renew(store: Arc<dyn ObjectStore>, path: Path, started: u64) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        let Ok(body) = serde_json::to_vec(&Holder::me(started)) else {
            return;
        };
        if let Err(e) = store.put(&path, body.into()).await {
            tracing::warn!("cannot renew the lock {path}: {e}");
        }
    }
}
