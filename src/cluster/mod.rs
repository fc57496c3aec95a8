//! Scale-out on Apache DataFusion Ballista: one binary is the client (`run --cluster`), the
//! scheduler and the executors.
//!
//! - [`codec`]: how `embed()` and the sinks travel in plans (by name and settings, no secrets);
//! - [`models`]: each executor loads a model once and shares it between its tasks;
//! - [`client`]: plans the job, submits it and sums the partitions' reports;
//! - [`publish`]: a Parquet output's parts are published only when the job succeeded;
//! - [`scheduler`], [`executor`]: the two server commands;
//! - [`scheduler_api`]: the scheduler's REST API, as the client uses it (executors registered,
//!   cancelling a stopped client's job);
//! - [`stores`]: the job's storage settings travel with it, and executors build their S3
//!   clients from them and their own credentials.

pub mod client;
pub mod codec;
pub mod executor;
pub mod jobs;
pub mod models;
pub mod phases;
pub mod publish;
pub mod scheduler;
pub mod scheduler_api;
pub mod stores;

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
