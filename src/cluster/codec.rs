//! How embedflow's parts of a plan travel between client, scheduler and executors: Ballista's
//! logical and physical extension codecs, extended with
//!
//! - `embed()`: by name plus its settings (the `embed:` spec and the vector width); the model is
//!   loaded on each executor the first time the function runs there ([`super::models`]);
//! - `chunks()` (`embed.chunking`): by its settings and the model whose tokenizer measures;
//! - `fingerprint()` (incremental runs): by name;
//! - the sink: the sink table (logical) and [`PartitionedSinkExec`] (physical), by the sink's
//!   settings without secrets ([`PartTarget`]); each executor reads its API key from its own
//!   environment.
//!
//! Everything else goes to Ballista's own codecs. embedflow's payloads start with [`TAG`], so
//! decoding never mistakes one for Ballista's.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::{DataFusionError, Result, TableReference, internal_err};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan, ScalarUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};

use crate::driver::partitioned::{PartTarget, PartitionedSinkExec};
use crate::driver::table::SinkTable;
use crate::embed::EmbedSpec;
use crate::embed::bm25::udf::Bm25Udf;
use crate::embed::bm25::{Bm25, Bm25Params};
use crate::embed::chunk::{ChunkingSpec, ChunksUdf};
use crate::embed::udf::EmbedUdf;
use crate::plan::fingerprint::FingerprintUdf;

/// The first bytes of every payload embedflow encodes.
pub const TAG: &[u8] = b"embedflow/1\n";

/// `embed()` on the wire.
#[derive(Serialize, Deserialize)]
struct EmbedPayload {
    spec: EmbedSpec,
    dim: usize,
}

fn encode_json<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<()> {
    buf.extend_from_slice(TAG);
    serde_json::to_writer(buf, value).map_err(|e| DataFusionError::External(e.into()))
}

/// The JSON after [`TAG`], or `None` when `buf` is not embedflow's.
fn decode_json<T: for<'de> Deserialize<'de>>(buf: &[u8], what: &str) -> Result<Option<T>> {
    let Some(json) = buf.strip_prefix(TAG) else {
        return Ok(None);
    };
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| DataFusionError::Internal(format!("cannot decode embedflow's {what}: {e}")))
}

/// `chunks()` on the wire: the chunking settings and the model whose tokenizer measures.
#[derive(Serialize, Deserialize)]
struct ChunksPayload {
    chunking: ChunkingSpec,
    model: EmbedSpec,
}

/// `embed()` and `chunks()` as embedflow encodes them; any other function goes to `other`
/// (Ballista's codec).
fn encode_embed_or(
    node: &ScalarUDF,
    buf: &mut Vec<u8>,
    other: impl FnOnce(&mut Vec<u8>) -> Result<()>,
) -> Result<()> {
    let inner = node.inner().as_ref();
    if let Some(chunks) = inner.downcast_ref::<ChunksUdf>() {
        let (chunking, model) = chunks.settings();
        return encode_json(
            &ChunksPayload {
                chunking: chunking.clone(),
                model: model.clone(),
            },
            buf,
        );
    }
    if inner.downcast_ref::<FingerprintUdf>().is_some() {
        // No settings: the executors' own function.
        return encode_json(&"fingerprint", buf);
    }
    if let Some(bm25) = inner.downcast_ref::<Bm25Udf>() {
        // A document's weights need the settings and avgdl, not the document frequencies.
        let mut params = bm25.bm25().params().clone();
        params.doc_freq = Default::default();
        return encode_json(&params, buf);
    }
    let Some(embed) = inner.downcast_ref::<EmbedUdf>() else {
        return other(buf);
    };
    encode_json(
        &EmbedPayload {
            spec: embed.spec().clone(),
            dim: embed.dim(),
        },
        buf,
    )
}

/// A deferred `embed()` from embedflow's payload; any other function from `other`.
fn decode_embed_or(
    name: &str,
    buf: &[u8],
    other: impl FnOnce() -> Result<Arc<ScalarUDF>>,
) -> Result<Arc<ScalarUDF>> {
    if name == "chunks" {
        return match decode_json::<ChunksPayload>(buf, "chunks() settings")? {
            Some(p) => Ok(Arc::new(ChunksUdf::deferred(
                p.chunking,
                p.model,
                super::models::shared_embedder,
            ))),
            None => other(),
        };
    }
    if name == "fingerprint" {
        return match decode_json::<String>(buf, "fingerprint()")? {
            Some(_) => Ok(Arc::new(FingerprintUdf::udf())),
            None => other(),
        };
    }
    if name == "bm25" {
        return match decode_json::<Bm25Params>(buf, "bm25() parameters")? {
            Some(p) => Ok(Arc::new(Bm25Udf::documents(Arc::new(Bm25::new(p))))),
            None => other(),
        };
    }
    if name != "embed" {
        return other();
    }
    match decode_json::<EmbedPayload>(buf, "embed() settings")? {
        Some(p) => Ok(Arc::new(ScalarUDF::new_from_impl(EmbedUdf::deferred(
            p.spec,
            p.dim,
            super::models::shared_embedder,
        )))),
        None => other(),
    }
}

/// Ballista's physical codec plus `embed()` and [`PartitionedSinkExec`].
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

/// A [`PartitionedSinkExec`] on the wire (its input travels as the node's input).
#[derive(Serialize, Deserialize)]
struct SinkPayload {
    sink: PartTarget,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match decode_json::<SinkPayload>(buf, "sink")? {
            Some(payload) => {
                let [input] = inputs else {
                    return internal_err!("PartitionedSinkExec takes one input");
                };
                Ok(Arc::new(PartitionedSinkExec::new(
                    Arc::clone(input),
                    payload.sink,
                )))
            }
            None => self.ballista.try_decode(buf, inputs, ctx, proto_converter),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        match node.downcast_ref::<PartitionedSinkExec>() {
            Some(sink) => encode_json(
                &SinkPayload {
                    sink: sink.target().clone(),
                },
                buf,
            ),
            None => self.ballista.try_encode(node, buf, proto_converter),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_embed_or(name, buf, || self.ballista.try_decode_udf(name, buf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        encode_embed_or(node, buf, |buf| self.ballista.try_encode_udf(node, buf))
    }
}

/// Ballista's logical codec plus `embed()` and the sink table.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match decode_json::<SinkPayload>(buf, "sink table")? {
            Some(payload) => Ok(Arc::new(SinkTable::for_target(payload.sink, schema))),
            None => self
                .ballista
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let sink = node.downcast_ref::<SinkTable>().map(SinkTable::target);
        match sink {
            Some(target) => encode_json(&SinkPayload { sink: target }, buf),
            None => self
                .ballista
                .try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        decode_embed_or(name, buf, || self.ballista.try_decode_udf(name, buf))
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        encode_embed_or(node, buf, |buf| self.ballista.try_encode_udf(node, buf))
    }
}
