//! `src/cluster/codec.rs`

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::displayable;
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
    physical_plan_from_bytes_with_extension_codec, physical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use embedflow::cluster::codec::*;
use embedflow::config::Pipeline;
use embedflow::driver::partitioned::{PartTarget, PartitionedSinkExec};
use embedflow::driver::table::SinkTable;
use embedflow::embed::EmbedSpec;
use embedflow::embed::udf::EmbedUdf;
use embedflow::sink::SinkSpec;
use embedflow::storage::StorageSpec;

const SECRET: &str = "pc-codec-secret-4d1e";

fn never_loads(_: &EmbedSpec) -> anyhow::Result<Arc<embedflow::embed::Embedder>> {
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
        let plan = embedflow::cluster::jobs::job_plan(Arc::clone(&input), target.clone());
        let bytes = physical_plan_to_bytes_with_extension_codec(Arc::clone(&plan), &codec).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "the API key travelled in the plan"
        );
        let back =
            physical_plan_from_bytes_with_extension_codec(&bytes, &ctx.task_ctx(), &codec).unwrap();
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
