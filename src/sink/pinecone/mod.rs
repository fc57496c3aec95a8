//! Pinecone sink: a backpressured async writer that loses nothing.
//!
//! - Preflight ([`PineconeSink::open`], before anything is embedded): the index exists, the key
//!   works on the control and data planes, and the index's dimension is the model's.
//! - Rows become serialized records ([`records`]), grouped into requests bounded by count and
//!   bytes ([`batcher`]), each sent by its own task with retries ([`delivery`]).
//! - `write` returns only when a request slot is free: requests in flight are bounded by an
//!   adaptive limit ([`concurrency`]), and the plan is pulled only as fast as requests finish.
//! - Rows whose retries run out go to the dead-letter file ([`dead_letter`]).

#[doc(hidden)]
pub mod batcher;
pub mod client;
#[doc(hidden)]
pub mod concurrency;
pub mod config;
mod dead_letter;
mod delivery;
pub mod import;
pub mod records;
pub mod replay;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use tokio::task::JoinSet;

use super::{Sink, SinkReport};
use crate::error::config_error;
use batcher::{Batcher, UpsertBatch};
use client::PineconeClient;
use concurrency::AdaptiveConcurrency;
use config::PineconeSinkSpec;
use dead_letter::DeadLetter;
use delivery::{Delivery, Health, Shared, deliver};
use records::{EncodedRecord, RecordEncoder};

/// A checked connection to one index.
pub struct Connection {
    pub client: PineconeClient,
    /// `index docs (namespace prod) at https://...`
    pub display: String,
    /// The index's metric, when the control plane described it.
    pub metric: Option<String>,
}

/// Finds the index's data plane and checks the key and (given the model's) the dimension;
/// sends no vectors.
pub async fn connect(spec: &PineconeSinkSpec, model_dim: Option<usize>) -> Result<Connection> {
    let key = client::api_key(spec)?;
    let timeout = Duration::from_secs(spec.request_timeout_secs);
    let controller = client::controller_url(spec);
    let (data_plane, described_dim, metric) = match &spec.host {
        Some(host) => (client::data_plane_url(host, "https://"), None, None),
        None => {
            let d = client::describe_index(&key, &controller, &spec.index, timeout).await?;
            if !d.status.ready {
                return Err(anyhow!(
                    "Pinecone index `{}` is not ready (state {}); wait for it and re-run",
                    spec.index,
                    d.status.state
                ));
            }
            tracing::debug!(
                "index {} at {} (dimension {:?}, metric {:?})",
                spec.index,
                d.host,
                d.dimension,
                d.metric
            );
            (
                client::data_plane_url(&d.host, &controller),
                d.dimension,
                d.metric.clone(),
            )
        }
    };
    let client = PineconeClient::new(&key, data_plane, timeout)?;
    let stats = client::index_stats(&client).await?;
    let dim = described_dim.or(stats.dimension);
    if let (Some(d), Some(model_dim)) = (dim, model_dim)
        && d != model_dim
    {
        return Err(config_error(format!(
            "Pinecone index `{}` has dimension {d}, but the model makes {model_dim}-dimensional vectors; use an index of dimension {model_dim} or the model the index was built for",
            spec.index
        )));
    }
    let display = match spec.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!(
            "Pinecone index {} (namespace {ns}) at {}",
            spec.index,
            client.data_plane()
        ),
        _ => format!("Pinecone index {} at {}", spec.index, client.data_plane()),
    };
    Ok(Connection {
        client,
        display,
        metric,
    })
}

/// Sparse values (`embed.sparse`) score only in a dot-product index: refuses any other metric
/// before anything is embedded.
pub fn check_sparse_metric(
    conn: &Connection,
    spec: &PineconeSinkSpec,
    schema: &Schema,
) -> Result<()> {
    if schema
        .field_with_name(crate::embed::bm25::udf::SPARSE_COLUMN)
        .is_err()
    {
        return Ok(());
    }
    match conn.metric.as_deref() {
        Some(m) if m != "dotproduct" => Err(config_error(format!(
            "Pinecone index `{}` uses the {m} metric, but embed.sparse sends sparse values, which Pinecone takes only in an index with metric dotproduct (hybrid search); create a dotproduct index, or leave out embed.sparse",
            spec.index
        ))),
        _ => Ok(()),
    }
}

pub struct PineconeSink {
    encoder: RecordEncoder,
    batcher: Batcher,
    shared: Arc<Shared>,
    tasks: JoinSet<Result<Delivery>>,
    dead_letter: DeadLetter,
    landed: u64,
    display: String,
    namespace: Option<String>,
    /// Requests in flight for updates and deletes.
    concurrency: usize,
    /// Ids of landed vectors, kept once tracking starts (incremental runs).
    confirmed: Option<Vec<String>>,
}

/// The dimension of the plan's `vector` column.
fn vector_dim(schema: &Schema) -> Result<usize> {
    match schema.field_with_name("vector").map(|f| f.data_type()) {
        Ok(datafusion::arrow::datatypes::DataType::FixedSizeList(_, n)) => Ok(*n as usize),
        _ => Err(anyhow!(
            "the pipeline's output has no fixed-size `vector` column"
        )),
    }
}

pub(crate) fn default_dead_letter(index: &str) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let safe: String = index
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    PathBuf::from(format!("embedflow-dead-letter-{safe}-{secs}.jsonl"))
}

impl PineconeSink {
    /// Preflight, then a writer ready for batches of the plan's output schema.
    pub async fn open(spec: &PineconeSinkSpec, schema: &Schema) -> Result<PineconeSink> {
        let encoder = RecordEncoder::new(spec, schema)?;
        Self::open_with(spec, encoder, vector_dim(schema)?, Some(schema)).await
    }

    /// Preflight, then a writer for rows without vectors (deletes, metadata updates) of
    /// `schema`: the metadata columns it lacks are not sent.
    pub async fn open_without_vectors(
        spec: &PineconeSinkSpec,
        schema: &Schema,
        dim: usize,
    ) -> Result<PineconeSink> {
        let mut present = spec.clone();
        present
            .metadata
            .retain(|name| schema.field_with_name(name).is_ok());
        let encoder = RecordEncoder::new(&present, schema)?;
        Self::open_with(spec, encoder, dim, None).await
    }

    /// Preflight, then a writer of records already serialized (`dim` values each).
    pub async fn open_for_records(spec: &PineconeSinkSpec, dim: usize) -> Result<PineconeSink> {
        Self::open_with(spec, RecordEncoder::without_metadata(spec), dim, None).await
    }

    /// Sends serialized records, as [`Sink::write`] sends encoded rows.
    pub async fn write_records(&mut self, records: Vec<EncodedRecord>) -> Result<()> {
        for r in records {
            if let Some(full) = self.batcher.push(r) {
                self.submit(full).await?;
            }
        }
        Ok(())
    }

    async fn open_with(
        spec: &PineconeSinkSpec,
        encoder: RecordEncoder,
        dim: usize,
        schema: Option<&Schema>,
    ) -> Result<PineconeSink> {
        let conn = connect(spec, Some(dim)).await?;
        if let Some(schema) = schema {
            check_sparse_metric(&conn, spec, schema)?;
        }
        tracing::info!("writing to {}", conn.display);
        Ok(PineconeSink {
            encoder,
            batcher: Batcher::new(
                spec.batch_size,
                spec.max_request_bytes,
                spec.namespace.as_deref(),
            ),
            shared: Arc::new(Shared {
                client: conn.client,
                limiter: AdaptiveConcurrency::new(spec.concurrency),
                max_retries: spec.max_retries,
                health: Health::new(Duration::from_secs(spec.give_up_after_secs)),
                requests: Default::default(),
                retries: Default::default(),
                splits: Default::default(),
            }),
            tasks: JoinSet::new(),
            dead_letter: DeadLetter::new(
                spec.dead_letter
                    .clone()
                    .unwrap_or_else(|| default_dead_letter(&spec.index)),
                spec.namespace.as_deref(),
            ),
            landed: 0,
            display: conn.display,
            namespace: spec.namespace.clone().filter(|n| !n.is_empty()),
            concurrency: spec.concurrency.max(1),
            confirmed: None,
        })
    }

    fn absorb(
        &mut self,
        joined: std::result::Result<Result<Delivery>, tokio::task::JoinError>,
    ) -> Result<()> {
        let delivery = joined.map_err(|e| anyhow!("an upsert task failed: {e}"))??;
        self.landed += delivery.landed;
        if let Some(confirmed) = &mut self.confirmed {
            confirmed.extend(delivery.landed_ids);
        }
        for (batch, reason) in &delivery.failed {
            self.dead_letter.write(batch, reason)?;
        }
        Ok(())
    }

    /// Fails once the index has been unreachable for `give_up_after_secs`.
    fn check_reachable(&self) -> Result<()> {
        if !self.shared.health.is_dead() {
            return Ok(());
        }
        let (failing, last_error) = self.shared.health.failing();
        Err(Unreachable {
            index: self.display.clone(),
            seconds: failing.as_secs(),
            last_error,
            dead_letter: self.dead_letter.path().display().to_string(),
        }
        .into())
    }

    /// Starts a request once the concurrency limit has a slot for it; finished requests are
    /// absorbed while it waits.
    async fn submit(&mut self, batch: UpsertBatch) -> Result<()> {
        loop {
            while let Some(done) = self.tasks.try_join_next() {
                self.absorb(done)?;
            }
            self.check_reachable()?;
            let limiter = self.shared.limiter.clone();
            tokio::select! {
                permit = limiter.acquire() => {
                    let shared = Arc::clone(&self.shared);
                    self.tasks.spawn(async move {
                        let delivery = deliver(shared, batch).await;
                        drop(permit);
                        delivery
                    });
                    return Ok(());
                }
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.absorb(done)?;
                }
            }
        }
    }
}

#[async_trait]
impl Sink for PineconeSink {
    async fn write(&mut self, batch: RecordBatch) -> Result<()> {
        let records = self.encoder.encode(&batch)?;
        self.write_records(records).await
    }

    fn keeps_one_row_per_id(&self) -> bool {
        true
    }

    fn confirms_as_it_goes(&self) -> bool {
        true
    }

    fn track_confirmations(&mut self) {
        self.confirmed.get_or_insert_with(Vec::new);
    }

    fn take_confirmed(&mut self) -> Vec<String> {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = self.absorb(done) {
                tracing::warn!("{e:#}");
            }
        }
        self.confirmed
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    async fn delete(&mut self, ids: Vec<String>) -> Result<()> {
        for part in ids.chunks(config::limits::MAX_IDS_PER_DELETE) {
            let body = serde_json::to_vec(&DeleteRequest {
                ids: part,
                namespace: self.namespace.as_deref(),
            })?;
            self.shared
                .client
                .post_retrying::<serde_json::Value>("/vectors/delete", body.into())
                .await
                .map_err(|e| {
                    anyhow!(
                        "{}: cannot delete {} vectors (e.g. `{}`): {e}",
                        self.display,
                        part.len(),
                        part[0]
                    )
                })?;
        }
        Ok(())
    }

    async fn update_metadata(&mut self, batch: RecordBatch) -> Result<()> {
        use futures::{StreamExt, TryStreamExt};
        let updates = self.encoder.encode_metadata(&batch)?;
        let client = &self.shared.client;
        let namespace = self.namespace.as_deref();
        let display = &self.display;
        futures::stream::iter(updates)
            .map(|(id, metadata)| async move {
                let body = serde_json::to_vec(&UpdateRequest {
                    id: &id,
                    set_metadata: &metadata,
                    namespace,
                })?;
                client
                    .post_retrying::<serde_json::Value>("/vectors/update", body.into())
                    .await
                    .map_err(|e| anyhow!("{display}: cannot update the metadata of `{id}`: {e}"))?;
                Ok::<(), anyhow::Error>(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
    }

    async fn flush(&mut self) -> Result<()> {
        if let Some(last) = self.batcher.take() {
            self.submit(last).await?;
        }
        while let Some(done) = self.tasks.join_next().await {
            self.absorb(done)?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<SinkReport> {
        self.flush().await?;
        self.check_reachable()?;
        self.dead_letter.flush()?;
        let (peak, decreases) = self.shared.limiter.stats();
        let requests = self.shared.requests.load(Ordering::Relaxed);
        let retries = self.shared.retries.load(Ordering::Relaxed);
        tracing::info!(
            "{} vectors upserted in {requests} requests ({retries} retried, {} split); concurrency peaked at {peak}, backed off {decreases} times",
            self.landed,
            self.shared.splits.load(Ordering::Relaxed)
        );
        let failed = self.dead_letter.rows();
        let confirmed = self.confirmed.take().unwrap_or_default();
        Ok(SinkReport {
            confirmed,
            rows_written: self.landed,
            location: self.display.clone(),
            rows_failed: failed,
            dead_letter: (failed > 0).then(|| self.dead_letter.path().display().to_string()),
            requests: Some(requests),
            retries: Some(retries),
            import_id: None,
        })
    }

    fn abort_outcome(&self) -> &'static str {
        "requests in flight were cancelled; vectors already upserted stay in the index, and a re-run overwrites them (ids are stable)"
    }

    async fn abort(mut self: Box<Self>) {
        if self.shared.health.is_dead() {
            // The index is gone: requests in flight end at once, and what they and the batcher
            // hold goes to the dead-letter file, so nothing computed is lost.
            while let Some(done) = self.tasks.join_next().await {
                if let Err(e) = self.absorb(done) {
                    tracing::warn!("{e:#}");
                }
            }
            if let Some(rest) = self.batcher.take()
                && let Err(e) = self
                    .dead_letter
                    .write(&rest, "not sent: the index was unreachable")
            {
                tracing::warn!("{e:#}");
            }
        } else {
            // Interrupted or failed: requests in flight are cancelled. Vectors already upserted
            // stay in the index; a re-run overwrites them (ids are stable).
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        let _ = self.dead_letter.flush();
        if self.dead_letter.rows() > 0 {
            tracing::warn!(
                "{} rows that could not be written are in {}",
                self.dead_letter.rows(),
                self.dead_letter.path().display()
            );
        }
    }
}

#[derive(serde::Serialize)]
struct DeleteRequest<'a> {
    ids: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UpdateRequest<'a> {
    id: &'a str,
    set_metadata: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a str>,
}

/// Every request failed for `give_up_after_secs`: the run stops embedding.
#[derive(Debug)]
pub struct Unreachable {
    pub index: String,
    pub seconds: u64,
    pub last_error: String,
    pub dead_letter: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is unreachable: every request failed for {} s (last error: {}; sink.pinecone.give_up_after_secs sets the limit); stopped embedding, and the rows computed but not written are in the dead-letter file {}",
            self.index, self.seconds, self.last_error, self.dead_letter
        )
    }
}

impl std::error::Error for Unreachable {}
