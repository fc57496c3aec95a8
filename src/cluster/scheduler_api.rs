//! The scheduler's REST API (served on its gRPC port), as the client uses it: how many executors
//! are registered, and cancelling this client's job when it is stopped or fails, so that no
//! executor runs it later.

use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Job {
    job_id: String,
    job_name: String,
    status: String,
}

/// The REST API of the scheduler at `base` (`http://host:port`).
pub struct SchedulerApi {
    http: reqwest::Client,
    base: String,
}

impl SchedulerApi {
    pub fn new(base: &str) -> SchedulerApi {
        SchedulerApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            base: base.trim_end_matches('/').to_string(),
        }
    }

    /// Executors registered now; `None` when the scheduler has no REST API to ask.
    async fn executors(&self) -> Result<Option<usize>> {
        let url = format!("{}/api/executors", self.base);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| anyhow!("the scheduler at {} cannot be reached: {e}", self.base))?;
        if !response.status().is_success() {
            return Ok(None);
        }
        let executors: Vec<serde_json::Value> = response.json().await.unwrap_or_default();
        Ok(Some(executors.len()))
    }

    /// Returns once an executor is registered; says that it waits, and fails (exit 1) after
    /// `limit`. A scheduler without the REST API is not waited for.
    pub async fn wait_for_executors(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        let mut said = false;
        loop {
            match self.executors().await? {
                None => return Ok(()),
                Some(n) if n > 0 => {
                    if said {
                        tracing::info!("{n} executors registered: submitting the job");
                    }
                    return Ok(());
                }
                Some(_) => {}
            }
            if start.elapsed() >= limit {
                return Err(anyhow!(
                    "no executor registered with the scheduler at {} within {} s: start executors (embedflow executor --scheduler HOST:PORT), or wait longer with --wait-for-executors SECS",
                    self.base,
                    limit.as_secs()
                ));
            }
            if !said {
                tracing::warn!(
                    "waiting for executors to register with the scheduler at {} (up to {} s, --wait-for-executors)",
                    self.base,
                    limit.as_secs()
                );
                said = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Cancels the jobs named `name` that are still queued or running. Best effort: says what
    /// it could not do, never fails.
    pub async fn cancel_jobs_named(&self, name: &str) {
        let jobs: Vec<Job> = match self.get_jobs().await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!("cannot cancel the job `{name}` on the scheduler: {e}");
                return;
            }
        };
        for job in jobs
            .iter()
            .filter(|j| j.job_name == name && matches!(j.status.as_str(), "Queued" | "Running"))
        {
            let url = format!("{}/api/job/{}", self.base, job.job_id);
            match self.http.patch(&url).send().await {
                Ok(r) if r.status().is_success() => {
                    tracing::info!("cancelled the job {} on the scheduler", job.job_id);
                    self.wait_until_ended(&job.job_id, Duration::from_secs(5))
                        .await;
                }
                Ok(r) => tracing::warn!(
                    "the scheduler did not cancel the job {}: HTTP {}",
                    job.job_id,
                    r.status()
                ),
                Err(e) => tracing::warn!("cannot cancel the job {}: {e}", job.job_id),
            }
        }
    }

    /// Waits (a bounded time) until the scheduler no longer counts the job as running.
    async fn wait_until_ended(&self, job_id: &str, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            let running = self.get_jobs().await.is_ok_and(|jobs| {
                jobs.iter().any(|j| {
                    j.job_id == job_id && matches!(j.status.as_str(), "Queued" | "Running")
                })
            });
            if !running {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get_jobs(&self) -> Result<Vec<Job>> {
        let url = format!("{}/api/jobs", self.base);
        let response = self.http.get(&url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }
}
