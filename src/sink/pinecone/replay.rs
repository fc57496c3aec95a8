//! `embedflow replay FILE --pipeline P`: upserts the vectors of a dead-letter file to the
//! pipeline's Pinecone index, through the same writer (batching, backpressure, retries, a new
//! dead-letter file for what fails again). The file is read line by line: memory stays flat.

use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::PineconeSink;
use super::config::PineconeSinkSpec;
use super::records::EncodedRecord;
use crate::error::config_error;
use crate::report::RunSummary;
use crate::sink::Sink;

/// One dead-letter line.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(borrow)]
    vector: &'a RawValue,
}

/// The parts of a vector checked before it is sent again.
#[derive(Deserialize)]
struct Vector {
    id: String,
    values: Vec<f32>,
}

/// Reads one line into a record, checking it; `None` for a blank line.
fn record(
    text: &str,
    at: &str,
    dim: Option<usize>,
    namespace: &str,
) -> Result<Option<(EncodedRecord, usize)>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let line: Line =
        serde_json::from_str(text).map_err(|e| anyhow!("{at}: not a dead-letter line ({e})"))?;
    let found = line.namespace.as_deref().unwrap_or("");
    if found != namespace {
        return Err(config_error(format!(
            "{at}: the vector was meant for namespace `{found}`, but the pipeline writes to `{namespace}`; replay it with --set sink.pinecone.namespace={found}"
        )));
    }
    let v: Vector = serde_json::from_str(line.vector.get())
        .map_err(|e| anyhow!("{at}: `vector` is not an id with values ({e})"))?;
    if let Some(d) = dim
        && v.values.len() != d
    {
        bail!(
            "{at}: id `{}` has {} values, the earlier lines {d}",
            v.id,
            v.values.len()
        );
    }
    if v.values.iter().any(|x| !x.is_finite()) {
        bail!("{at}: id `{}` holds a value that is not finite", v.id);
    }
    let dim = v.values.len();
    Ok(Some((
        EncodedRecord {
            id: v.id,
            json: line.vector.get().as_bytes().to_vec(),
        },
        dim,
    )))
}

/// Upserts every vector of `file`.
pub async fn replay(file: &Path, spec: &PineconeSinkSpec) -> Result<RunSummary> {
    let start = Instant::now();
    let shown = file.display().to_string();
    let open = || {
        std::fs::File::open(file)
            .map(std::io::BufReader::new)
            .with_context(|| format!("cannot read the dead-letter file {shown}"))
    };
    let namespace = spec.namespace.as_deref().unwrap_or("");
    // The first vector gives the dimension, checked against the index before anything is sent.
    let mut dim = None;
    for (n, text) in open()?.lines().enumerate() {
        let text = text.with_context(|| format!("cannot read {shown}"))?;
        if let Some((_, d)) = record(&text, &format!("{shown}, line {}", n + 1), None, namespace)? {
            dim = Some(d);
            break;
        }
    }
    let Some(dim) = dim else {
        bail!("{shown} holds no vectors");
    };
    let mut sink = PineconeSink::open_for_records(spec, dim).await?;
    let mut read = 0u64;
    for (n, text) in open()?.lines().enumerate() {
        let text = text.with_context(|| format!("cannot read {shown}"))?;
        let at = format!("{shown}, line {}", n + 1);
        let parsed = record(&text, &at, Some(dim), namespace);
        let r = match parsed {
            Ok(Some((r, _))) => r,
            Ok(None) => continue,
            Err(e) => {
                Box::new(sink).abort().await;
                return Err(e);
            }
        };
        read += 1;
        if let Err(e) = sink.write_records(vec![r]).await {
            Box::new(sink).abort().await;
            return Err(e);
        }
    }
    let report = Box::new(sink).finish().await?;
    let mut summary = RunSummary {
        rows_read: read,
        seconds: start.elapsed().as_secs_f64(),
        stream_seconds: start.elapsed().as_secs_f64(),
        ..Default::default()
    };
    summary.record_sink(report);
    Ok(summary)
}
