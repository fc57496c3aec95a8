//! Progress (a bar on a terminal, log lines otherwise) and the end-of-run summary.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Counts shown while a run goes and in its summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunSummary {
    pub rows_read: u64,
    pub rows_embedded: u64,
    pub rows_skipped: u64,
    pub rows_written: u64,
    pub tokens: u64,
    /// Wall time of the whole run, model loading included.
    pub seconds: f64,
    /// Of `seconds`, the time spent loading (and, once, preparing) the model.
    pub model_seconds: f64,
    /// Of `seconds`, the time rows streamed from the source to the sink: the rates count it.
    pub stream_seconds: f64,
    /// Rows that shared an id with an earlier row (`embed.duplicate_ids: keep_last`).
    pub duplicate_rows: u64,
    /// Texts longer than `max_seq_length`: only their first `max_seq_length` word pieces were
    /// embedded, as sentence-transformers does.
    pub rows_truncated: u64,
    pub output: String,
    /// Rows embedded but not written (network sinks): they are in `dead_letter`.
    pub rows_failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u64>,
    /// `I/N` when the run processed one shard of the rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Cluster runs: partitions written by each executor process (`host:pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions_by_worker: Option<std::collections::BTreeMap<String, u64>>,
    /// Incremental runs: what the source held against the state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalCounts>,
    /// The Pinecone bulk import that carried the rows (`sink.pinecone.import`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub import_id: Option<String>,
    /// Files that sorts, joins and aggregates spilled to disk past the memory limit, in this
    /// process (on a cluster, the client's; each executor logs its own limit).
    pub spill_files: u64,
}

/// Source rows of an incremental run, by what happened to them.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IncrementalCounts {
    /// Ids the state did not hold: embedded.
    pub new: u64,
    /// Text or embedding settings changed: embedded again.
    pub changed: u64,
    /// Only metadata changed: updated without embedding.
    pub metadata_only: u64,
    /// Left as they were.
    pub unchanged: u64,
    /// Ids gone from the source, deleted from the sink (`incremental.deletes`).
    pub deleted: u64,
    /// Where the state is.
    pub state: String,
    /// When the run read a Delta table's change data feed instead of the whole table: the
    /// versions it covered. `unchanged` then counts only rows the feed named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub change_feed: Option<FeedVersions>,
}

/// The versions of a Delta table's change feed a run read: the changes after `since`, up to
/// and including `to`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct FeedVersions {
    pub table: String,
    pub since: u64,
    pub to: u64,
}

static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Logs are JSON lines (`--log-format json`).
pub fn set_json_logs() {
    JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

impl RunSummary {
    /// Takes what a sink reported when it finished.
    pub fn record_sink(&mut self, report: SinkReport) {
        self.rows_written = report.rows_written;
        self.output = report.location;
        self.rows_failed = report.rows_failed;
        self.dead_letter = report.dead_letter;
        self.requests = report.requests;
        self.retries = report.retries;
        self.import_id = report.import_id;
    }

    /// With JSON logs, the summary as a log line of its own, one field per count.
    pub fn log(&self) {
        if !json_logs() {
            return;
        }
        let inc = self.incremental.clone().unwrap_or_default();
        tracing::info!(
            rows_read = self.rows_read,
            rows_embedded = self.rows_embedded,
            rows_skipped = self.rows_skipped,
            rows_written = self.rows_written,
            rows_failed = self.rows_failed,
            rows_truncated = self.rows_truncated,
            duplicate_rows = self.duplicate_rows,
            tokens = self.tokens,
            seconds = self.seconds,
            model_seconds = self.model_seconds,
            rows_per_second = self.rows_per_second(),
            tokens_per_second = self.tokens_per_second(),
            output = %self.output,
            dead_letter = self.dead_letter.as_deref(),
            requests = self.requests,
            retries = self.retries,
            shard = self.shard.as_deref(),
            incremental = self.incremental.is_some(),
            new = inc.new,
            changed = inc.changed,
            metadata_only = inc.metadata_only,
            unchanged = inc.unchanged,
            deleted = inc.deleted,
            spill_files = self.spill_files,
            "summary"
        );
    }

    /// Rows per second while streaming (the progress line's rate, on the same clock).
    pub fn rows_per_second(&self) -> f64 {
        self.rows_embedded as f64 / self.stream_seconds.max(1e-9)
    }
    /// Tokens per second while streaming (the progress line's rate, on the same clock).
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens as f64 / self.stream_seconds.max(1e-9)
    }
}

/// What a finished sink reports for the run summary.
#[derive(Debug, Clone, Default)]
pub struct SinkReport {
    pub rows_written: u64,
    /// Where the output landed, for the summary line.
    pub location: String,
    /// Rows that could not be written and went to the dead-letter file.
    pub rows_failed: u64,
    pub dead_letter: Option<String>,
    /// HTTP requests made and retried (network sinks).
    pub requests: Option<u64>,
    pub retries: Option<u64>,
    /// The Pinecone bulk import that carries the rows.
    pub import_id: Option<String>,
    /// Vector ids confirmed since the last [`crate::sink::Sink::take_confirmed`] (sinks that confirm as they
    /// go, when tracking).
    pub confirmed: Vec<String>,
}

impl fmt::Display for RunSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rows read {}, embedded {}, skipped {} (null text), written {} to {} in {:.1} s (model {:.1} s): {:.1} rows/s",
            self.rows_read,
            self.rows_embedded,
            self.rows_skipped,
            self.rows_written,
            self.output,
            self.seconds,
            self.model_seconds,
            self.rows_per_second(),
        )?;
        // A pipeline that embeds nothing (embed.vector) on a cluster has no tokens to speak of.
        if self.tokens > 0 || self.partitions_by_worker.is_none() {
            write!(f, ", {:.0} tokens/s", self.tokens_per_second())?;
        }
        if self.duplicate_rows > 0 {
            write!(
                f,
                "; {} rows shared an id with another row (embed.duplicate_ids: keep_last)",
                self.duplicate_rows
            )?;
        }
        if let Some(i) = &self.incremental {
            write!(
                f,
                "; incremental: {} new, {} changed, {} metadata-only, {} unchanged, {} deleted",
                i.new, i.changed, i.metadata_only, i.unchanged, i.deleted
            )?;
            if let Some(feed) = &i.change_feed {
                write!(
                    f,
                    " (the change feed of table `{}`, versions {} to {})",
                    feed.table,
                    feed.since + 1,
                    feed.to
                )?;
            }
        }
        if self.spill_files > 0 {
            write!(
                f,
                "; {} files spilled to disk past the memory limit (--memory-limit)",
                self.spill_files
            )?;
        }
        if let (Some(req), Some(ret)) = (self.requests, self.retries) {
            write!(f, "; {req} requests, {ret} retried")?;
        }
        if let Some(dl) = &self.dead_letter {
            write!(
                f,
                "; {} rows NOT written, saved in dead-letter file {dl}",
                self.rows_failed
            )?;
        }
        Ok(())
    }
}

/// Reports progress: an indicatif bar on a terminal, a log line every 10 s otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: Option<u64>,
    rows: u64,
    start: Instant,
    last_log: Instant,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(total: Option<u64>, enabled: bool) -> Progress {
        let tty = enabled && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            bar.set_draw_target(ProgressDrawTarget::stderr());
            let template = if total.is_some() {
                "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} rows ({per_sec}, ETA {eta}) {msg}"
            } else {
                "{spinner} [{elapsed_precise}] {human_pos} rows ({per_sec}) {msg}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            total,
            rows: 0,
            start: Instant::now(),
            last_log: Instant::now(),
        }
    }

    /// Seconds since rows started streaming.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Reports `rows` read and `tokens` embedded so far.
    pub fn advance(&mut self, rows: u64, tokens: u64) {
        self.rows = rows;
        let elapsed = self.elapsed().max(1e-9);
        if let Some(bar) = &self.bar {
            bar.set_position(rows);
            bar.set_message(format!("{:.0} tok/s", tokens as f64 / elapsed));
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let rate = self.rows as f64 / elapsed;
            match self.total {
                Some(t) if t > 0 => {
                    let left = t.saturating_sub(self.rows) as f64 / rate.max(1e-9);
                    tracing::info!(
                        rows = self.rows,
                        total = t,
                        tokens,
                        "progress: {}/{} rows ({:.0}%), {:.1} rows/s, {:.0} tokens/s, ETA {:.0} s",
                        self.rows,
                        t,
                        100.0 * self.rows as f64 / t as f64,
                        rate,
                        tokens as f64 / elapsed,
                        left
                    );
                }
                _ => tracing::info!(
                    rows = self.rows,
                    tokens,
                    "progress: {} rows, {:.1} rows/s, {:.0} tokens/s",
                    self.rows,
                    rate,
                    tokens as f64 / elapsed
                ),
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

tokio::task_local! {
    /// Tokens embedded by the task that writes one partition (a cluster job's sink node).
    static PARTITION_TOKENS: std::sync::Arc<std::sync::atomic::AtomicU64>;
}

/// Counts `tokens` embedded for the partition whose write is running on this task, if any:
/// `embed()` runs inside the poll of the sink node's input, on that task.
pub fn count_partition_tokens(tokens: u64) {
    let _ =
        PARTITION_TOKENS.try_with(|c| c.fetch_add(tokens, std::sync::atomic::Ordering::Relaxed));
}

/// Runs `write` (one partition's write) counting the tokens `embed()` embeds for it; returns its
/// output and the count. Executors share one model between tasks, so its own total cannot say
/// which partition the tokens were for.
pub async fn counting_partition_tokens<T>(write: impl Future<Output = T>) -> (T, u64) {
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let out = PARTITION_TOKENS
        .scope(std::sync::Arc::clone(&counter), write)
        .await;
    (out, counter.load(std::sync::atomic::Ordering::Relaxed))
}
