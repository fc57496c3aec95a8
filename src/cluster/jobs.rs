//! A cluster job's plan and its submission: the pipeline's physical plan with its rows spread
//! over partitions below `embed()`, the sink node on top, and [`Jobs`], which submits a client's
//! jobs to the scheduler under the client's own job name with the object stores they need.
//! Used by the plain run ([`super::client`]) and an incremental run's phases
//! ([`super::phases`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use ballista_core::config::BallistaConfig;
use ballista_core::execution_plans::execute_physical_plan;
use ballista_core::extension::SessionConfigExt;
use datafusion::arrow::array::RecordBatch;
use datafusion::execution::context::SessionConfig;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;

use super::codec::{LogicalCodec, PhysicalCodec};
use super::scheduler_api::SchedulerApi;
use super::stores::TravellingStores;
use crate::config::Pipeline;
use crate::driver::partitioned::{PartTarget, PartitionedSinkExec};
use crate::plan;
use crate::sink::SinkKind;

/// The session settings a job runs with on the cluster.
pub fn session_config(job_name: &str) -> SessionConfig {
    let mut config = SessionConfig::new_with_ballista()
        .with_batch_size(plan::PLAN_BATCH_ROWS)
        .with_ballista_job_name(job_name)
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()));
    // As locally: sort-merge joins, which spill past each executor's memory limit.
    config.options_mut().optimizer.prefer_hash_join = false;
    config
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
    // Hash joins, not the sort-merge joins a local session prefers (they spill): the scheduler
    // splits the plan into stages, and a sort-merge join's input ordering does not survive that
    // (rows of the carry-over went missing).
    optimizer.prefer_hash_join = true;
    Ok(state.create_physical_plan(&logical).await?)
}

/// The whole job as one physical plan: the pipeline's plan, written partition by partition, the
/// partitions' reports gathered in one.
pub fn job_plan(frame_plan: Arc<dyn ExecutionPlan>, target: PartTarget) -> Arc<dyn ExecutionPlan> {
    Arc::new(CoalescePartitionsExec::new(Arc::new(
        PartitionedSinkExec::new(frame_plan, target),
    )))
}

/// Waits for the cluster's executors, then names this client's jobs and the object stores
/// they need (the sources', the output's and the state's).
pub(super) async fn connect(
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
