//! How much memory the plan's operators may hold (the incremental run's joins, the duplicate-id
//! check, sorts and aggregates) and where they spill past it: one DataFusion memory pool per
//! process, shared by every query it runs, with spill files on local disk.
//!
//! The limit is `--memory-limit` (or `EMBEDFLOW_MEMORY_LIMIT`); by default half of the memory
//! this process may use (its cgroup's limit in a container, else the machine's). Sessions fit
//! themselves to it ([`fit_session`]): joins are sort-merge joins, which spill, rather than hash
//! joins, which hold their whole build side in memory (about 100 bytes per id of an incremental
//! state: 10 GB at 100M ids), and a small limit runs fewer partitions at once. An operator that
//! cannot fit even so fails with an error naming the setting, not an out-of-memory kill.
//! Embedding and the sinks hold bounded batches of their own, outside the pool.

use std::fmt;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytesize::ByteSize;
use datafusion::error::DataFusionError;
use datafusion::execution::DiskManager;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{SpillFile, TempFileFactory};
use datafusion::prelude::SessionConfig;

/// The pool's size and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimit {
    pub bytes: u64,
    /// Set by `--memory-limit` / `EMBEDFLOW_MEMORY_LIMIT`, not the default.
    pub given: bool,
}

impl MemoryLimit {
    /// `given`, or half of the memory this process may use.
    pub fn new(given: Option<ByteSize>) -> MemoryLimit {
        match given {
            Some(b) => MemoryLimit {
                bytes: b.as_u64(),
                given: true,
            },
            None => MemoryLimit {
                bytes: usable_memory() / 2,
                given: false,
            },
        }
    }
}

impl fmt::Display for MemoryLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let size = ByteSize(self.bytes).display().si();
        if self.given {
            write!(f, "{size} (--memory-limit)")
        } else {
            write!(f, "{size} (the default, half of this process's memory)")
        }
    }
}

/// The memory this process may use: its cgroup's limit when it has one, else the machine's.
pub fn usable_memory() -> u64 {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let total = sys.total_memory();
    match sys.cgroup_limits() {
        Some(c) if c.total_memory > 0 => c.total_memory.min(total),
        _ => total,
    }
}

static LIMIT: OnceLock<MemoryLimit> = OnceLock::new();
static RUNTIME: OnceLock<Arc<RuntimeEnv>> = OnceLock::new();
static SPILL_FILES: AtomicU64 = AtomicU64::new(0);

/// Sets this process's limit (the command line's `--memory-limit`); call before any query.
pub fn set_limit(given: Option<ByteSize>) {
    let limit = MemoryLimit::new(given);
    if LIMIT.set(limit).is_ok() {
        tracing::debug!("memory limit for sorts, joins and aggregates: {limit}");
    }
}

/// This process's limit.
pub fn limit() -> MemoryLimit {
    *LIMIT.get_or_init(|| MemoryLimit::new(None))
}

/// The least memory one partition of a plan runs in: its sorts hold a few batches (1,024
/// vectors of 384 floats are 1.6 MB) and room to merge their spill files.
const PER_PARTITION: u64 = 64 << 20;

/// Fits a session to the memory limit: sort-merge joins, which spill (hash joins cannot: their
/// build side must fit); no more partitions than the limit gives [`PER_PARTITION`] each, so a
/// small limit runs fewer sorts at once instead of failing; and each sort's reservation for
/// merging its spill files (DataFusion sets aside 10 MB) a share of the limit.
pub fn fit_session(mut config: SessionConfig, limit: MemoryLimit) -> SessionConfig {
    let fitting = usize::try_from(limit.bytes / PER_PARTITION).unwrap_or(usize::MAX);
    let partitions = config.target_partitions().min(fitting.max(1));
    config = config.with_target_partitions(partitions);
    let options = config.options_mut();
    options.optimizer.prefer_hash_join = false;
    let share = limit.bytes / (16 * partitions as u64).max(1);
    options.execution.sort_spill_reservation_bytes = options
        .execution
        .sort_spill_reservation_bytes
        .min(usize::try_from(share).unwrap_or(usize::MAX));
    config
}

/// Spill files a sort merges in one pass.
const MERGE_FAN_IN: usize = 16;

/// A pool of `limit`'s size: spilling operators share it fairly; the error of one that finds no
/// room names the largest consumers.
pub fn pool(limit: MemoryLimit) -> Arc<dyn MemoryPool> {
    let bytes = usize::try_from(limit.bytes).unwrap_or(usize::MAX);
    Arc::new(TrackConsumersPool::new(
        FairSpillPool::new(bytes),
        NonZeroUsize::MIN.saturating_add(2),
    ))
}

/// A runtime on `pool` whose spill files go to `spill_dir` (the system's temporary folder when
/// `None`) and are counted ([`spill_files`]).
pub fn runtime_builder(
    pool: Arc<dyn MemoryPool>,
    spill_dir: Option<PathBuf>,
) -> datafusion::error::Result<RuntimeEnvBuilder> {
    let mode = match spill_dir {
        Some(dir) => DiskManagerMode::Directories(vec![dir]),
        None => DiskManagerMode::OsTmpDirectory,
    };
    let disk = Arc::new(DiskManagerBuilder::default().with_mode(mode).build()?);
    let counting = DiskManagerMode::Custom(Arc::new(CountedSpills { disk }));
    // A sort merges at most this many spill files at once (more take several passes): each
    // open file holds a batch in memory, so an unbounded merge of a large sort's many files
    // outgrew a 256 MiB limit at 10M rows.
    let disk = DiskManagerBuilder::default()
        .with_mode(counting)
        .with_max_spill_merge_fan_in(MERGE_FAN_IN);
    Ok(RuntimeEnvBuilder::new()
        .with_memory_pool(pool)
        .with_disk_manager_builder(disk))
}

/// This process's runtime: every session of a command shares its pool.
pub fn runtime() -> Arc<RuntimeEnv> {
    Arc::clone(RUNTIME.get_or_init(|| {
        match runtime_builder(pool(limit()), None).and_then(|b| b.build()) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                tracing::warn!(
                    "cannot set up the memory limit and spilling ({e}): running without"
                );
                Arc::new(RuntimeEnv::default())
            }
        }
    }))
}

/// Spill files this process created so far.
pub fn spill_files() -> u64 {
    SPILL_FILES.load(Ordering::Relaxed)
}

/// The disk manager's files, counted.
struct CountedSpills {
    disk: Arc<DiskManager>,
}

impl TempFileFactory for CountedSpills {
    fn create_temp_file(&self, description: &str) -> datafusion::error::Result<Arc<dyn SpillFile>> {
        SPILL_FILES.fetch_add(1, Ordering::Relaxed);
        self.disk.create_tmp_file(description)
    }
}

/// True when an operator found no room in the pool (DataFusion's `ResourcesExhausted`, however
/// wrapped).
pub fn exhausted(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<DataFusionError>()
            .is_some_and(|d| matches!(d.find_root(), DataFusionError::ResourcesExhausted(_)))
    })
}

/// Names the limit and the way out on an error that ran out of pool memory.
pub fn explain(err: anyhow::Error) -> anyhow::Error {
    if !exhausted(&err) {
        return err;
    }
    let limit = limit();
    err.context(format!(
        "the memory limit {limit} was reached by an operator that could not spill further: raise it with --memory-limit SIZE or EMBEDFLOW_MEMORY_LIMIT (e.g. 4GB), or give the process more memory"
    ))
}
