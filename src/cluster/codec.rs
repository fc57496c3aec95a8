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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pipeline;
    use crate::sink::SinkSpec;
    use crate::storage::StorageSpec;
    use datafusion::arrow::array::{RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::FunctionRegistry;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::bytes::{
        logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
        physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
    };

    const SECRET: &str = "pc-codec-secret-4d1e";

    fn never_loads(_: &EmbedSpec) -> anyhow::Result<Arc<crate::embed::Embedder>> {
        anyhow::bail!("the codec must not load the model")
    }

    /// A session with a deferred `embed()` (no model) and a small Parquet table `docs`.
    async fn session(dir: &std::path::Path) -> SessionContext {
        let mut spec = EmbedSpec::new("all-MiniLM-L6-v2");
        spec.threads = Some(3);
        let ctx = SessionContext::new();
        ctx.register_udf(ScalarUDF::new_from_impl(EmbedUdf::deferred(
            spec,
            384,
            never_loads,
        )));
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("text", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(StringArray::from(vec![Some("one"), None])),
            ],
        )
        .unwrap();
        let path = dir.join("docs.parquet");
        let file = std::fs::File::create(&path).unwrap();
        let mut w =
            datafusion::parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        ctx.register_parquet("docs", path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        ctx
    }

    fn sink(yaml: &str) -> SinkSpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn pinecone_sink() -> SinkSpec {
        sink(&format!(
            "pinecone: {{ index: docs, api_key: {SECRET}, metadata: [text] }}"
        ))
    }

    fn decoded_embed(plan: &Arc<dyn ExecutionPlan>) -> String {
        let text = displayable(plan.as_ref()).indent(true).to_string();
        assert!(text.contains("embed(text"), "{text}");
        text
    }

    #[tokio::test]
    async fn a_physical_plan_with_embed_and_each_sink_round_trips_without_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session(dir.path()).await;
        let frame = ctx
            .sql("SELECT id, embed(text) AS vector FROM docs")
            .await
            .unwrap();
        let input = frame.create_physical_plan().await.unwrap();
        let codec = PhysicalCodec::default();
        for (target, shows) in [
            (
                PartTarget::new(
                    &sink("parquet: { path: out/vectors }"),
                    &StorageSpec::default(),
                    Some("out/vectors/.staging".into()),
                ),
                "parquet out/vectors",
            ),
            (
                PartTarget::new(&pinecone_sink(), &StorageSpec::default(), None),
                "pinecone index docs",
            ),
        ] {
            let plan = crate::cluster::jobs::job_plan(Arc::clone(&input), target.clone());
            let bytes =
                physical_plan_to_bytes_with_extension_codec(Arc::clone(&plan), &codec).unwrap();
            assert!(
                !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                "the API key travelled in the plan"
            );
            let back =
                physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec)
                    .unwrap();
            assert_eq!(
                displayable(plan.as_ref()).indent(true).to_string(),
                decoded_embed(&back)
            );
            assert!(decoded_embed(&back).contains(shows));
            // The sink node carries the same settings.
            let node = back.children()[0];
            let sink = node.downcast_ref::<PartitionedSinkExec>().unwrap();
            assert_eq!(
                serde_json::to_string(sink.target()).unwrap(),
                serde_json::to_string(&target).unwrap()
            );
        }
    }

    #[tokio::test]
    async fn embed_travels_by_name_and_settings_and_loads_only_when_run() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session(dir.path()).await;
        let codec = PhysicalCodec::default();
        let udf = ctx.udf("embed").unwrap();
        let mut buf = Vec::new();
        codec.try_encode_udf(&udf, &mut buf).unwrap();
        assert!(buf.starts_with(TAG));
        let back = codec.try_decode_udf("embed", &buf).unwrap();
        let back = back.inner().as_ref().downcast_ref::<EmbedUdf>().unwrap();
        assert_eq!(back.dim(), 384);
        assert_eq!(back.spec().model, "all-MiniLM-L6-v2");
        assert_eq!(back.spec().threads, Some(3));
        // Another function is Ballista's business: by name only.
        let other = ctx.udf("upper").unwrap();
        let mut buf = Vec::new();
        codec.try_encode_udf(&other, &mut buf).unwrap();
        assert!(buf.is_empty());
        // Garbage after the tag is an error, not a silent fallback.
        let mut bad = TAG.to_vec();
        bad.extend_from_slice(b"{not json");
        assert!(codec.try_decode_udf("embed", &bad).is_err());
    }

    #[tokio::test]
    async fn an_insert_into_the_sink_table_round_trips_as_a_logical_plan() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = session(dir.path()).await;
        let frame = ctx
            .sql("SELECT id, embed(text) AS vector, text FROM docs")
            .await
            .unwrap();
        let mut pipeline: Pipeline = serde_yaml_ng::from_str(
            "source: { tables: { docs: { path: docs.parquet } } }\nembed: { model: m }\nsink: { pinecone: { index: docs } }\n",
        )
        .unwrap();
        pipeline.sink = pinecone_sink();
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let table = Arc::new(SinkTable::new(pipeline, Arc::clone(&schema)));
        let insert = datafusion::logical_expr::LogicalPlanBuilder::insert_into(
            frame.logical_plan().clone(),
            "sink",
            datafusion::datasource::provider_as_source(table),
            datafusion::logical_expr::dml::InsertOp::Append,
        )
        .unwrap()
        .build()
        .unwrap();
        let codec = LogicalCodec::default();
        let bytes = logical_plan_to_bytes_with_extension_codec(&insert, &codec).unwrap();
        assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()));
        let back =
            logical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
        assert_eq!(
            format!("{}", insert.display_indent()),
            format!("{}", back.display_indent())
        );
        // Decoded, the sink table plans a partitioned write.
        let physical = ctx.state().create_physical_plan(&back).await.unwrap();
        let text = displayable(physical.as_ref()).indent(true).to_string();
        assert!(
            text.contains("PartitionedSinkExec: pinecone index docs"),
            "{text}"
        );
    }
}
