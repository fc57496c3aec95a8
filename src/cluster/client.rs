//! `embedflow run --cluster df://HOST:PORT`: the pipeline planned here, run on a Ballista cluster.
//!
//! The client loads the model (to check it and learn the vector width), builds the same plan a
//! local run builds, with the source rows spread over partitions by a hash of their id, puts
//! [`PartitionedSinkExec`] on top and submits the physical plan to the scheduler. Ballista cuts it
//! into stages at the shuffle: executors scan and hash the source, then embed and write their
//! partitions. Each partition reports one row, and the client adds them up into the usual
//! summary; a Parquet output is published only when the whole job succeeded ([`Staging`]).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow};
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::context::SessionConfig;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;
use futures::future::BoxFuture;

use super::codec::{LogicalCodec, PhysicalCodec};
use super::publish::Staging;
use super::scheduler_api::SchedulerApi;
use super::stores::TravellingStores;
use crate::config::Pipeline;
use crate::driver::{RunOptions, check_destination, load_embedder, say_truncated};
use crate::error::{Interrupted, config_error};
use crate::plan::{self, checks};
use crate::report::RunSummary;
use crate::signals::Shutdown;
use crate::sink::SinkKind;
use crate::sink::partitioned::{PartTarget, PartitionedSinkExec, add_partition_rows};

/// Partitions of a cluster job when `--partitions` is not given: enough for two executors with
/// a few task slots each to share the work, and for a lost task to cost little.
pub const DEFAULT_PARTITIONS: usize = 8;

/// `df://host:port` (or `host:port`), given by the command-line flag `flag`, as the scheduler's
/// gRPC URL.
pub fn scheduler_url(flag: &str, cluster: &str) -> Result<String> {
    let address = cluster
        .strip_prefix("df://")
        .unwrap_or(cluster)
        .trim_end_matches('/');
    let (host, port) = address.rsplit_once(':').ok_or_else(|| {
        config_error(format!(
            "{flag} {cluster}: give the scheduler as df://HOST:PORT (e.g. df://127.0.0.1:50050)"
        ))
    })?;
    let port: u16 = port.parse().map_err(|_| {
        config_error(format!(
            "{flag} {cluster}: `{port}` is not a port (df://HOST:PORT)"
        ))
    })?;
    if host.is_empty() {
        return Err(config_error(format!(
            "{flag} {cluster}: no host (df://HOST:PORT)"
        )));
    }
    Ok(format!("http://{host}:{port}"))
}

/// The session settings a job runs with on the cluster.
pub fn session_config(job_name: &str) -> SessionConfig {
    SessionConfig::new_with_ballista()
        .with_batch_size(plan::PLAN_BATCH_ROWS)
        .with_ballista_job_name(job_name)
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()))
}

/// The plan with its rows spread over `partitions` by a hash of the text, just below the
/// projection that calls `embed()`: the shuffle that shares the embedding out over executors,
/// however few files or row groups the source has. (DataFusion's optimizer would drop a
/// repartition asked for in the logical plan, since nothing above requires it; it is added to
/// the optimized physical plan instead.)
pub fn spread(plan: Arc<dyn ExecutionPlan>, partitions: usize) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
    use datafusion::physical_expr::ScalarFunctionExpr;
    use datafusion::physical_plan::projection::ProjectionExec;
    use datafusion::physical_plan::repartition::RepartitionExec;

    let embed_argument = |p: &ProjectionExec| {
        let mut found = None;
        for e in p.expr() {
            let _ = e.expr.apply(|x| {
                if let Some(f) = x.downcast_ref::<ScalarFunctionExpr>()
                    && f.name() == "embed"
                    && let [arg] = f.args()
                {
                    found = Some(Arc::clone(arg));
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            });
        }
        found
    };
    let spread = plan.transform_down(|node| {
        let Some(projection) = node.downcast_ref::<ProjectionExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(text) = embed_argument(projection) else {
            return Ok(Transformed::no(node));
        };
        let input = Arc::clone(projection.input());
        let shuffled = Arc::new(RepartitionExec::try_new(
            input,
            datafusion::physical_plan::Partitioning::Hash(vec![text], partitions),
        )?);
        let node = datafusion::physical_plan::execution_plan::replace_children_if_necessary(
            Arc::clone(&node),
            vec![shuffled],
        )?;
        Ok(Transformed::new(node, true, TreeNodeRecursion::Jump))
    })?;
    if spread.transformed {
        return Ok(spread.data);
    }
    // Nothing to embed (embed.vector): the batches are dealt out to the partitions in turn.
    Ok(Arc::new(RepartitionExec::try_new(
        spread.data,
        datafusion::physical_plan::Partitioning::RoundRobinBatch(partitions),
    )?))
}

/// The pipeline's physical plan with `embed()` left in a projection of its own, where [`spread`]
/// finds it: DataFusion's physical `ProjectionPushdown` would merge that projection into a
/// Parquet scan (a pipeline without `sql:`), leaving no place for the shuffle below `embed()`.
/// Only that rule is left out (and dynamic filters, below); the logical optimizer still reads
/// just the columns used.
pub async fn physical_plan_for_cluster(
    frame: &datafusion::prelude::DataFrame,
) -> Result<Arc<dyn ExecutionPlan>> {
    use datafusion::execution::SessionStateBuilder;
    let (state, logical) = frame.clone().into_parts();
    let rules = state
        .physical_optimizers()
        .iter()
        .filter(|rule| rule.name() != "ProjectionPushdown")
        .cloned()
        .collect();
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_physical_optimizer_rules(rules)
        .build();
    // The scheduler plans the stages again, and may swap a hash join's inputs: a join whose
    // dynamic filter was already built here cannot be swapped (a task then fails in the
    // scheduler). Without dynamic filters, the joins of an incremental run's plans travel.
    let optimizer = &mut state.config_mut().options_mut().optimizer;
    optimizer.enable_dynamic_filter_pushdown = false;
    optimizer.enable_join_dynamic_filter_pushdown = false;
    optimizer.enable_topk_dynamic_filter_pushdown = false;
    optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    Ok(state.create_physical_plan(&logical).await?)
}

/// The whole job as one physical plan: the pipeline's plan, written partition by partition, the
/// partitions' reports gathered in one.
pub fn job_plan(frame_plan: Arc<dyn ExecutionPlan>, target: PartTarget) -> Arc<dyn ExecutionPlan> {
    Arc::new(CoalescePartitionsExec::new(Arc::new(
        PartitionedSinkExec::new(frame_plan, target),
    )))
}

/// Runs `pipeline` on the cluster whose scheduler is at `cluster`.
pub async fn run_on_cluster(
    pipeline: &Pipeline,
    cluster: &str,
    partitions: Option<usize>,
    wait_for_executors: std::time::Duration,
    opts: &RunOptions,
    shutdown: &Shutdown,
) -> Result<RunSummary> {
    let url = scheduler_url("--cluster", cluster)?;
    let api = SchedulerApi::new(&url);
    if opts.shard.is_some() {
        return Err(config_error(
            "--shard and --cluster are two ways to split a job: use one",
        ));
    }
    let partitions = partitions.unwrap_or(DEFAULT_PARTITIONS).max(1);
    if let Some(spec) = &pipeline.incremental {
        // The state is read, locked and published by this client; its checkpoints are written
        // by the tasks, so it must be where every executor can write.
        let (jobs, api) = shutdown
            .until(connect(pipeline, &url, cluster, wait_for_executors))
            .await?;
        let mut phases = super::phases::ClusterPhases::new(jobs, api, partitions);
        return crate::incremental::run_on(pipeline, spec, opts, shutdown, &mut phases).await;
    }
    let start = Instant::now();
    // A pipeline that reads vectors (embed.vector) loads no model.
    let embedder = match pipeline.embed.vector {
        Some(_) => None,
        None => Some(shutdown.until(load_embedder(&pipeline.embed)).await?),
    };
    let model_seconds = start.elapsed().as_secs_f64();
    check_destination(pipeline)?;
    let plan = match &embedder {
        Some(e) => plan::build(pipeline, Arc::clone(e)).await?,
        None => plan::build_vectors(pipeline, None).await?,
    };
    let dim = vector_width(&plan.frame)?;
    let (jobs, _) = shutdown
        .until(connect(pipeline, &url, cluster, wait_for_executors))
        .await?;
    let job_name = jobs.job_name.clone();
    // The id checks are aggregates over the source: jobs on the cluster too.
    let on_cluster =
        |frame: datafusion::prelude::DataFrame| -> BoxFuture<'static, Result<Vec<RecordBatch>>> {
            let jobs = jobs.clone();
            Box::pin(async move { jobs.collect(physical_plan_for_cluster(&frame).await?).await })
        };
    let ids = match shutdown
        .until(checks::check_ids_on(&plan.ids, pipeline, &on_cluster))
        .await
    {
        Ok(ids) => ids,
        Err(e) => {
            api.cancel_jobs_named(&job_name).await;
            return Err(e);
        }
    };
    let staging = match pipeline.sink.kind()? {
        SinkKind::Parquet(spec) => Some(Staging::prepare(spec, &pipeline.storage).await?),
        SinkKind::Pinecone(spec) => {
            // The same preflight a local run makes, before any executor starts.
            shutdown
                .until(crate::sink::pinecone::connect(spec, dim))
                .await?;
            None
        }
    };
    let mut target = PartTarget::new(
        &pipeline.sink,
        &pipeline.storage,
        staging.as_ref().map(|s| s.parts.clone()),
    );
    if let Some(p) = target.sink.pinecone.as_mut()
        && p.dead_letter.is_none()
    {
        p.dead_letter = Some(crate::sink::pinecone::default_dead_letter(&p.index));
    }
    let job = async {
        let frame_plan = physical_plan_for_cluster(&plan.frame).await?;
        let root = job_plan(spread(frame_plan, partitions)?, target);
        tracing::info!(
            "submitting the job to {url}: {partitions} partitions, {}",
            root.name()
        );
        jobs.collect(root).await
    };
    let mut signals = shutdown.clone();
    let batches = tokio::select! {
        batches = job => batches,
        signal = signals.requested() => {
            let outcome = match &staging {
                Some(_) => "nothing was published; the previous output is as it was",
                None => "vectors upserted before the signal stay in the index; a re-run overwrites them",
            };
            api.cancel_jobs_named(&job_name).await;
            if let Some(staging) = staging {
                staging.discard().await;
            }
            return Err(Interrupted { signal, outcome: outcome.to_string() }.into());
        }
    };
    let batches = match batches {
        Ok(b) => b,
        Err(e) => {
            api.cancel_jobs_named(&job_name).await;
            if let Some(staging) = staging {
                staging.discard().await;
            }
            return Err(e);
        }
    };
    let mut summary = RunSummary::default();
    let reported = add_partition_rows(&mut summary, &batches)?;
    tracing::debug!("{reported} partition reports for {partitions} partitions");
    match (staging, pipeline.sink.kind()?) {
        (Some(staging), SinkKind::Parquet(spec)) => {
            let parts = staging.publish().await?;
            summary.output = format!("{} ({parts} parts)", spec.path.trim_end_matches('/'));
        }
        (_, SinkKind::Pinecone(spec)) => {
            summary.output = format!("pinecone index {}", spec.index);
            // An index keeps one vector per id.
            summary.rows_written = summary.rows_written.saturating_sub(ids.extra_rows);
        }
        _ => {}
    }
    summary.duplicate_rows = ids.extra_rows;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.model_seconds = model_seconds;
    summary.stream_seconds = summary.seconds - model_seconds;
    if let Some(embedder) = &embedder {
        say_truncated(&summary, embedder);
    }
    Ok(summary)
}

/// Waits for the cluster's executors, then names this client's jobs and the object stores
/// they need (the sources', the output's and the state's).
async fn connect(
    pipeline: &Pipeline,
    url: &str,
    cluster: &str,
    wait_for_executors: std::time::Duration,
) -> Result<(Jobs, SchedulerApi)> {
    let api = SchedulerApi::new(url);
    api.wait_for_executors(wait_for_executors).await?;
    let mut paths: Vec<&str> = pipeline
        .source
        .tables
        .values()
        .map(|t| t.path.as_str())
        .collect();
    if let Ok(SinkKind::Parquet(p)) = pipeline.sink.kind() {
        paths.push(&p.path);
    }
    if let Some(i) = &pipeline.incremental {
        paths.push(&i.state);
    }
    let stores = TravellingStores::new(&pipeline.storage, paths);
    let session_id = format!("embedflow-{}", super::job_stamp());
    // The jobs' name is this client's own, so that a stop or a failure cancels its jobs only.
    let job_name = format!("embedflow run {session_id}");
    let jobs = Jobs {
        url: url.to_string(),
        cluster: cluster.to_string(),
        session_id,
        job_name,
        stores,
    };
    Ok((jobs, api))
}

/// Submits this client's jobs to the cluster, each under the client's job name and with the
/// object stores it needs.
#[derive(Clone)]
pub(super) struct Jobs {
    url: String,
    cluster: String,
    session_id: String,
    job_name: String,
    stores: TravellingStores,
}

impl Jobs {
    /// The name every job of this client has.
    pub(super) fn name(&self) -> &str {
        &self.job_name
    }

    /// Runs `plan` on the cluster to its end and returns its output.
    pub(super) async fn collect(&self, plan: Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>> {
        let stream = execute_physical_plan::<PhysicalPlanNode>(
            self.url.clone(),
            &BallistaConfig::default(),
            plan,
            &PhysicalCodec::default(),
            self.session_id.clone(),
            session_config(&self.job_name).with_option_extension(self.stores.clone()),
        )
        .await
        .with_context(|| format!("the cluster at {} did not take the job", self.cluster))?;
        stream
            .try_collect()
            .await
            .with_context(|| format!("the job on the cluster at {} failed", self.cluster))
    }
}

/// The width of the plan's `vector` column.
fn vector_width(frame: &datafusion::prelude::DataFrame) -> Result<usize> {
    match frame
        .schema()
        .field_with_unqualified_name("vector")
        .map(|f| f.data_type().clone())
    {
        Ok(datafusion::arrow::datatypes::DataType::FixedSizeList(_, n)) => Ok(n as usize),
        _ => Err(anyhow!("the plan has no vector column of fixed width")),
    }
}
