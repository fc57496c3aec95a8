//! Scale-out on Apache DataFusion Ballista: one binary is the client (`run --cluster`), the
//! scheduler and the executors.
//!
//! - [`codec`]: how `embed()` and the sinks travel in plans (by name and settings, no secrets);
//! - [`models`]: each executor loads a model once and shares it between its tasks;
//! - [`client`]: plans the job, submits it and sums the partitions' reports;
//! - [`publish`]: a Parquet output's parts are published only when the job succeeded;
//! - [`scheduler`], [`executor`]: the two server commands.

pub mod client;
pub mod codec;
pub mod executor;
pub mod models;
pub mod publish;
pub mod scheduler;

/// `<pid>-<ms since the epoch>`: names what belongs to one job of this client (its session, its
/// staging folder).
pub(crate) fn job_stamp() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}
