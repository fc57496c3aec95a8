//! Command line: `run`, `validate`, `explain`, `query` and `sql`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};

use crate::config::Pipeline;
use crate::driver::{self, RunOptions};
use crate::embed::{EmbedSpec, Embedder};
use crate::error::{PartialRun, config_error, one_line};
use crate::plan::{self, source};
use crate::query::{self, OutputFormat};
use crate::shard::Shard;
use crate::signals::Shutdown;
use crate::sink::SinkKind;

/// Turn tables of text into vector indexes: Parquet → DataFusion → ONNX Runtime → Parquet.
#[derive(Debug, Parser)]
#[command(name = "embedflow", version, about, max_term_width = 100)]
pub struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). EMBEDFLOW_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Log lines on stderr as text, or as one JSON object per line (timestamp, level, message
    /// and fields), the final summary and the error line included.
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Memory that sorts, joins and aggregates may hold before they spill to disk (e.g. 2GB,
    /// 512MiB); default: half of this process's memory (its cgroup's limit in a container).
    #[arg(
        long,
        global = true,
        env = "EMBEDFLOW_MEMORY_LIMIT",
        value_name = "SIZE"
    )]
    pub memory_limit: Option<bytesize::ByteSize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PipelineArgs {
    /// The pipeline YAML file.
    pub pipeline: PathBuf,
    /// Override a key, e.g. --set embed.batch_tokens=4096 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl PipelineArgs {
    fn load(&self) -> Result<Pipeline> {
        Pipeline::load(&self.pipeline, &self.set)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: read, embed, write; ends with a summary.
    Run {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// No progress bar or progress log lines.
        #[arg(long)]
        no_progress: bool,
        /// Also write the summary as JSON to this file.
        #[arg(long, value_name = "PATH")]
        summary_json: Option<PathBuf>,
        /// Incremental pipelines: ignore the state, embed every row, and write the state again.
        #[arg(long)]
        full: bool,
        /// Process only the rows whose id hashes to shard I of N (0-based), e.g. --shard 0/3; a
        /// Parquet output gets one part per shard (part-I.parquet) in its folder.
        #[arg(long, value_name = "I/N")]
        shard: Option<Shard>,
        /// Run on a Ballista cluster: its scheduler, e.g. df://127.0.0.1:50050 (see
        /// `embedflow scheduler` and `embedflow executor`). A Parquet output gets one part per
        /// partition in its folder, published when the job succeeded.
        #[arg(long, value_name = "df://HOST:PORT")]
        cluster: Option<String>,
        /// With --cluster: partitions the rows are spread over (each is one task).
        #[arg(long, value_name = "N", requires = "cluster", default_value_t = crate::cluster::client::DEFAULT_PARTITIONS)]
        partitions: usize,
        /// With --cluster: seconds to wait for an executor to register with the scheduler
        /// before giving up (exit 1).
        #[arg(long, value_name = "SECS", requires = "cluster", default_value_t = 120)]
        wait_for_executors: u64,
    },
    /// Start a Ballista scheduler for `run --cluster` (its REST API is on the same port).
    Scheduler {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
        /// Seconds an executor may stay silent (it polls for tasks at least every 5 s) before it
        /// is lost and its tasks run again elsewhere.
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        executor_timeout: u64,
    },
    /// Start a Ballista executor: it runs embed() and writes to the sink for jobs of the
    /// scheduler (models load here; API keys come from this process's environment).
    Executor(ExecutorArgs),
    /// Check a pipeline without embedding: parse it, load the model, check tables and columns,
    /// print the output schema.
    Validate {
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Print the DataFusion plan of a pipeline.
    Explain {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// Include the physical plan.
        #[arg(long)]
        physical: bool,
    },
    /// Exact cosine top-k over a pipeline's Parquet output, or Pinecone's query API.
    Query(QueryArgs),
    /// Ad-hoc SQL with embed() and cosine_similarity() registered.
    Sql(SqlArgs),
    /// Prepare the offline default model (all-MiniLM-L6-v2) in the local model cache, with the
    /// Python environment embedflow is installed in (after `pip install embedflow`).
    Setup,
    /// Upsert the vectors of a dead-letter file to the pipeline's Pinecone index, with the same
    /// batching, retries and exit codes as `run`.
    Replay(ReplayArgs),
    /// A Pinecone bulk import a run started (`sink.pinecone.import`, `wait: false`): its status,
    /// waiting for its end (exit 0 when it completed, 1 when it failed or was cancelled), or
    /// cancelling it.
    Import(ImportArgs),
}

#[derive(Debug, Args)]
pub struct ExecutorArgs {
    /// The scheduler, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
    scheduler: String,
    /// Address to bind and to advertise to the scheduler and the other executors.
    #[arg(long, default_value = "127.0.0.1")]
    bind_host: String,
    /// Arrow Flight port (shuffle data, results) and gRPC port (tasks); several executors on one
    /// machine need distinct ports.
    #[arg(long, value_name = "FLIGHT,GRPC", value_delimiter = ',', default_values_t = [50051u16, 50052u16])]
    ports: Vec<u16>,
    /// ONNX Runtime threads per task (default: the cores divided by the task slots).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Tasks run at once (default: the cores divided by --threads, else 1).
    #[arg(long, value_name = "N")]
    task_slots: Option<usize>,
    /// Folder for shuffle files (default: a temporary folder).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub action: ImportAction,
    /// The pipeline whose Pinecone index holds the import.
    #[arg(long, global = true)]
    pub pipeline: Option<PathBuf>,
    /// Override a key, e.g. --set sink.pinecone.index=docs (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImportAction {
    /// Print the import's status as JSON (status, percentComplete, recordsImported, error).
    Status { id: String },
    /// Follow the import to its end, logging its progress.
    Wait { id: String },
    /// Cancel the import.
    Cancel { id: String },
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The dead-letter file (JSON lines, as a Pinecone run writes them).
    file: PathBuf,
    /// The pipeline whose Pinecone sink receives the vectors.
    #[arg(long, value_name = "PIPELINE")]
    pipeline: PathBuf,
    /// Override a key, e.g. --set sink.pinecone.namespace=prod (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Also write the summary as JSON to this file.
    #[arg(long, value_name = "PATH")]
    summary_json: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// The text to search for.
    #[arg(required_unless_present = "queries")]
    text: Option<String>,
    /// Many searches in one run (the model loaded once): a JSON Lines file of
    /// `{"id": ..., "text": ...}`; each result is a JSON line with its `query_id`.
    #[arg(long, value_name = "FILE", conflicts_with = "text")]
    queries: Option<PathBuf>,
    /// How many results.
    #[arg(short, default_value_t = 10)]
    k: usize,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Cut text columns to this many characters in table output (0: no cut).
    #[arg(long, default_value_t = 80)]
    width: usize,
    /// Pinecone sink: a metadata filter as JSON, e.g. '{"lang": {"$eq": "en"}}'.
    #[arg(long, value_name = "JSON")]
    filter: Option<String>,
    /// Pinecone sink: search this namespace instead of the pipeline's.
    #[arg(long)]
    namespace: Option<String>,
    /// Hybrid search (a pipeline with embed.sparse): the weight of the dense score against the
    /// BM25 sparse score, from 0 (sparse only) to 1 (dense only).
    #[arg(long, value_name = "0..1")]
    alpha: Option<f32>,
}

#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL statement.
    query: String,
    /// Register this pipeline's tables, use its model, and search its sink with
    /// vector_search('sink', embed('...'), k [, filter]).
    #[arg(long, value_name = "PIPELINE")]
    pipeline: Option<PathBuf>,
    /// Register a table: NAME=PATH (Parquet, CSV or JSON; file, folder or glob). Repeatable.
    #[arg(long = "table", value_name = "NAME=PATH")]
    tables: Vec<String>,
    /// Model for embed() when no pipeline is given.
    #[arg(long, default_value = "all-MiniLM-L6-v2")]
    model: String,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Allow statements that write or create files or tables (COPY, CREATE EXTERNAL TABLE,
    /// INSERT, DROP); by default `sql` only reads.
    #[arg(long)]
    allow_writes: bool,
}

/// Runs one command; each has its own function below.
pub async fn execute(cli: Cli, shutdown: Shutdown) -> Result<()> {
    crate::plan::memory::set_limit(cli.memory_limit);
    match cli.command {
        Command::Run {
            pipeline,
            no_progress,
            summary_json,
            full,
            shard,
            cluster,
            partitions,
            wait_for_executors,
        } => {
            let opts = RunOptions {
                progress: !no_progress && !cli.quiet,
                full,
                shard,
            };
            match cluster {
                Some(cluster) => {
                    let p = pipeline.load()?;
                    let summary = crate::cluster::client::run_on_cluster(
                        &p,
                        &cluster,
                        Some(partitions),
                        std::time::Duration::from_secs(wait_for_executors),
                        &opts,
                        &shutdown,
                    )
                    .await?;
                    report_summary(&summary, summary_json.as_deref())
                }
                None => run_command(&pipeline, &opts, summary_json.as_deref(), &shutdown).await,
            }
        }
        Command::Scheduler {
            bind,
            executor_timeout,
        } => {
            let opts = crate::cluster::scheduler::SchedulerOptions {
                bind,
                executor_timeout_secs: executor_timeout,
            };
            shutdown.until(crate::cluster::scheduler::serve(opts)).await
        }
        Command::Executor(args) => {
            let [flight, grpc] = args.ports[..] else {
                return Err(config_error(
                    "--ports takes two ports, FLIGHT,GRPC (e.g. --ports 50051,50052)",
                ));
            };
            let opts = crate::cluster::executor::ExecutorOptions {
                scheduler: args.scheduler,
                bind_host: args.bind_host,
                flight_port: flight,
                grpc_port: grpc,
                threads: args.threads,
                task_slots: args.task_slots,
                work_dir: args.work_dir,
            };
            crate::cluster::executor::serve(opts, &shutdown).await
        }
        Command::Validate { pipeline } => shutdown.until(validate_command(&pipeline)).await,
        Command::Explain { pipeline, physical } => {
            shutdown.until(explain_command(&pipeline, physical)).await
        }
        Command::Query(args) => shutdown.until(query_command(args)).await,
        Command::Sql(args) => shutdown.until(sql_command(args)).await,
        Command::Replay(args) => shutdown.until(replay_command(args)).await,
        Command::Import(args) => shutdown.until(import_command(args)).await,
        Command::Setup => {
            tokio::task::spawn_blocking(crate::embed::setup::install_default_model)
                .await
                .map_err(|e| anyhow!("setup panicked: {e}"))??;
            Ok(())
        }
    }
}

/// `import status|wait|cancel ID`: against the pipeline's Pinecone index.
async fn import_command(args: ImportArgs) -> Result<()> {
    use crate::sink::pinecone::import;
    let path = args
        .pipeline
        .context("--pipeline PIPELINE: the pipeline whose Pinecone index holds the import")?;
    let p = Pipeline::load(&path, &args.set)?;
    let SinkKind::Pinecone(spec) = p.sink.kind()? else {
        return Err(config_error(format!(
            "{}: the pipeline writes to Parquet, not to a Pinecone index",
            path.display()
        )));
    };
    let conn = crate::sink::pinecone::connect(spec, None).await?;
    let mut out = std::io::stdout().lock();
    match args.action {
        ImportAction::Status { id } => {
            let status = import::describe(&conn.client, &id).await?;
            writeln!(out, "{}", serde_json::to_string(&status)?)?;
        }
        ImportAction::Wait { id } => {
            let status = import::follow(&conn.client, &id).await?;
            writeln!(out, "{}", serde_json::to_string(&status)?)?;
        }
        ImportAction::Cancel { id } => {
            import::cancel(&conn.client, &id).await?;
            writeln!(out, "import {id} cancelled")?;
        }
    }
    Ok(())
}

/// `run`: the whole pipeline, the summary line on stdout, `--summary-json`, exit code 3 when
/// rows went to the dead-letter file.
async fn run_command(
    args: &PipelineArgs,
    opts: &RunOptions,
    summary_json: Option<&Path>,
    shutdown: &Shutdown,
) -> Result<()> {
    let p = args.load()?;
    let mut summary = crate::driver::run_locally(&p, opts, shutdown).await?;
    summary.shard = opts.shard.map(|s| s.to_string());
    report_summary(&summary, summary_json)
}

/// An `INSERT INTO sink` keeps `run`'s rules: it needs `--allow-writes`, an incremental
/// pipeline's output is refused (its state describes that output, and would no longer be
/// true), and the statement's ids are checked (non-null, unique unless the pipeline keeps the
/// last, short enough for the sink) before anything is embedded.
async fn check_insert_into_sink(
    ctx: &datafusion::prelude::SessionContext,
    query: &str,
    pipeline: &Pipeline,
    allow_writes: bool,
) -> Result<()> {
    use datafusion::logical_expr::LogicalPlan;
    let Ok(LogicalPlan::Dml(dml)) = ctx.state().create_logical_plan(query).await else {
        return Ok(());
    };
    if dml.table_name.table() != "sink" {
        return Ok(());
    }
    if !allow_writes {
        return Err(config_error(
            "INSERT INTO sink writes to the pipeline's sink, and `embedflow sql` only reads unless --allow-writes is given",
        ));
    }
    if pipeline.incremental.is_some() {
        return Err(config_error(
            "INSERT INTO sink is refused for an incremental pipeline: its state describes the sink's contents, and an INSERT would make it untrue; change the source and use `embedflow run`",
        ));
    }
    let rows = datafusion::prelude::DataFrame::new(ctx.state(), dml.input.as_ref().clone());
    crate::plan::checks::check_ids(&rows, &pipeline.embed, pipeline.sink.max_id_bytes())
        .await
        .map_err(|e| e.context("INSERT INTO sink"))?;
    Ok(())
}

/// `replay`: a dead-letter file's vectors, upserted again.
async fn replay_command(args: ReplayArgs) -> Result<()> {
    let p = Pipeline::load(&args.pipeline, &args.set)?;
    let SinkKind::Pinecone(spec) = p.sink.kind()? else {
        return Err(config_error(
            "replay sends vectors to a Pinecone index, but the pipeline's sink is Parquet",
        ));
    };
    let summary = crate::sink::pinecone::replay::replay(&args.file, spec).await?;
    report_summary(&summary, args.summary_json.as_deref())
}

/// The summary line on stdout (and as a JSON log line, and to `--summary-json`); exit code 3
/// when rows went to the dead-letter file.
fn report_summary(summary: &crate::report::RunSummary, summary_json: Option<&Path>) -> Result<()> {
    writeln!(std::io::stdout(), "embedflow: {summary}")?;
    summary.log();
    if let Some(path) = summary_json {
        let json = serde_json::to_string_pretty(&summary)?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match summary.dead_letter.clone() {
        Some(dead_letter) if summary.rows_failed > 0 => Err(PartialRun {
            rows_failed: summary.rows_failed,
            dead_letter,
        }
        .into()),
        _ => Ok(()),
    }
}

/// `validate`: everything `run` checks before it embeds, then the output schema.
async fn validate_command(args: &PipelineArgs) -> Result<()> {
    let p = args.load()?;
    let embedder = match p.embed.vector {
        Some(_) => None,
        None => Some(driver::load_embedder(&p.embed).await?),
    };
    let plan = build_plan(&p, embedder.as_ref()).await?;
    let sink = driver::open_sink(&p, &plan.frame).await?;
    let mut out = std::io::stdout().lock();
    if let SinkKind::Pinecone(_) = p.sink.kind()? {
        writeln!(out, "sink: key accepted, dimension matches")?;
    }
    sink.abort().await;
    let Some(embedder) = embedder else {
        let rows = plan.ids.clone().count().await?;
        writeln!(
            out,
            "pipeline {} is valid: it sends the vectors of column `{}` ({rows} rows), no model",
            args.pipeline.display(),
            p.embed.vector.as_deref().unwrap_or_default()
        )?;
        return print_schema(&mut out, &plan);
    };
    writeln!(
        out,
        "pipeline {} is valid: model {} ({} dimensions)",
        args.pipeline.display(),
        embedder.model_name(),
        embedder.dim()
    )?;
    let estimate = plan::estimate::estimate(
        &plan,
        &p.embed,
        matches!(p.sink.kind()?, crate::sink::SinkKind::Pinecone(_)),
        &embedder,
    )
    .await?;
    writeln!(out, "{estimate}")?;
    if p.incremental.is_some() {
        writeln!(
            out,
            "  (for a full run; an incremental run embeds only the new and changed rows)"
        )?;
    }
    print_schema(&mut out, &plan)
}

/// A pipeline's plan: with its model, or reading vectors (`embed.vector`).
async fn build_plan(p: &Pipeline, embedder: Option<&Arc<Embedder>>) -> Result<plan::PipelinePlan> {
    match embedder {
        Some(e) => plan::build(p.plan_spec(), Arc::clone(e)).await,
        None => plan::build_vectors(p.plan_spec(), None).await,
    }
}

fn print_schema(out: &mut impl Write, plan: &plan::PipelinePlan) -> Result<()> {
    writeln!(out, "output schema:")?;
    for f in plan.frame.schema().fields() {
        writeln!(
            out,
            "  {}: {}{}",
            f.name(),
            f.data_type(),
            if f.is_nullable() { "" } else { " not null" }
        )?;
    }
    Ok(())
}

/// `explain`: the DataFusion plan of the pipeline.
async fn explain_command(args: &PipelineArgs, physical: bool) -> Result<()> {
    use datafusion::arrow::array::AsArray;
    let p = args.load()?;
    let embedder = match p.embed.vector {
        Some(_) => None,
        None => Some(driver::load_embedder(&p.embed).await?),
    };
    let plan = build_plan(&p, embedder.as_ref()).await?;
    // The whole job as one plan: the output frame inserted into the sink table.
    let schema = Arc::new(plan.frame.schema().as_arrow().clone());
    let sink = Arc::new(crate::driver::table::SinkTable::new(p.clone(), schema));
    let insert = datafusion::logical_expr::LogicalPlanBuilder::insert_into(
        plan.frame.logical_plan().clone(),
        "sink",
        datafusion::datasource::provider_as_source(sink),
        datafusion::logical_expr::dml::InsertOp::Append,
    )?
    .build()?;
    let job = plan.ctx.execute_logical_plan(insert).await?;
    let explained = job.explain(false, false)?.collect().await?;
    let mut out = std::io::stdout().lock();
    for batch in explained {
        let kinds = batch.column(0).as_string::<i32>();
        let plans = batch.column(1).as_string::<i32>();
        for i in 0..batch.num_rows() {
            let kind = kinds.value(i);
            if kind.starts_with("physical") && !physical {
                continue;
            }
            writeln!(out, "{kind}:\n{}\n", plans.value(i))?;
        }
    }
    Ok(())
}

/// `query`: top-k over the Parquet output, or Pinecone's query API.
async fn query_command(s: QueryArgs) -> Result<()> {
    let p = s.pipeline.load()?;
    if s.k == 0 {
        return Err(config_error("-k must be at least 1"));
    }
    let filter = s
        .filter
        .map(|f| {
            serde_json::from_str::<serde_json::Value>(&f)
                .map_err(|e| config_error(format!("--filter is not JSON: {e}")))
        })
        .transpose()?;
    let hybrid = query::Hybrid::of(&p, s.alpha).await?;
    let embedder = driver::load_embedder(&p.embed).await?;
    let width = (s.width > 0 && s.format == OutputFormat::Table).then_some(s.width);
    let namespace = s.namespace.clone();
    let search = |text: String| {
        let (p, embedder, filter, namespace, hybrid) = (
            &p,
            Arc::clone(&embedder),
            filter.clone(),
            namespace.clone(),
            hybrid.as_ref(),
        );
        async move {
            match p.sink.kind()? {
                SinkKind::Parquet(_) => {
                    if filter.is_some() || namespace.is_some() {
                        return Err(config_error(
                            "--filter and --namespace apply to a Pinecone sink; use `embedflow sql` to filter Parquet output",
                        ));
                    }
                    query::search(p, embedder, &text, s.k, width, hybrid).await
                }
                SinkKind::Pinecone(spec) => {
                    let request = query::PineconeQuery {
                        k: s.k,
                        filter,
                        namespace: namespace.or_else(|| spec.namespace.clone()),
                        width,
                        chunked: p.embed.chunking.is_some(),
                    };
                    query::search_pinecone(spec, &embedder, &text, &request, hybrid).await
                }
            }
        }
    };
    let Some(file) = &s.queries else {
        let batches = search(s.text.clone().unwrap_or_default()).await?;
        return query::print(&batches, s.format);
    };
    let lines = std::fs::read_to_string(file)
        .map_err(|e| config_error(format!("--queries {}: {e}", file.display())))?;
    for (n, line) in lines
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let q: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            config_error(format!("--queries {} line {}: {e}", file.display(), n + 1))
        })?;
        let (Some(id), Some(text)) = (q.get("id").or_else(|| q.get("_id")), q["text"].as_str())
        else {
            return Err(config_error(format!(
                "--queries {} line {}: each line needs an id and a text",
                file.display(),
                n + 1
            )));
        };
        let batches = search(text.to_string()).await?;
        query::print_tagged(&batches, id)?;
    }
    Ok(())
}

/// `sql`: ad-hoc SQL with `embed()` and `cosine_similarity()`; read-only unless
/// `--allow-writes`.
async fn sql_command(c: SqlArgs) -> Result<()> {
    let loaded = match &c.pipeline {
        Some(path) => Some(Pipeline::load(path, &[])?),
        None => None,
    };
    let spec = match &loaded {
        Some(p) => p.embed.clone(),
        None => EmbedSpec::new(c.model),
    };
    let embedder = driver::load_embedder(&spec).await?;
    let ctx = plan::query_context(Arc::clone(&embedder));
    let storage = loaded
        .as_ref()
        .map(|p| p.storage.clone())
        .unwrap_or_default();
    let mut sink_table = None;
    if let Some(p) = &loaded {
        source::register_tables(&ctx, &p.source, &p.storage).await?;
        // embed.sparse: bm25(text) and bm25_query(text) with the parameters its run fitted.
        if let Some(path) = p.embed.sparse.as_ref().and_then(|s| s.params.as_deref())
            && let Some(params) = crate::embed::bm25::load_params(path, &p.storage).await?
        {
            let bm25 = Arc::new(crate::embed::bm25::Bm25::new(params));
            ctx.register_udf(crate::embed::bm25::udf::Bm25Udf::documents(Arc::clone(
                &bm25,
            )));
            ctx.register_udf(crate::embed::bm25::udf::Bm25Udf::queries(bm25));
        }
        // vector_search('sink', embed('...'), k): the pipeline's sink, searched from SQL.
        ctx.register_udtf(
            "vector_search",
            Arc::new(crate::vector_search::VectorSearch::new(p.clone())),
        );
        // INSERT INTO sink SELECT ...: written through the pipeline's sink. Its columns are the
        // pipeline's output; any but `id` may be left out of an INSERT's column list (null).
        let planned = build_plan(p, Some(&embedder)).await?;
        let fields: Vec<_> = planned
            .frame
            .schema()
            .fields()
            .iter()
            .map(|f| {
                let nullable = f.name() != "id";
                Arc::new(f.as_ref().clone().with_nullable(nullable))
            })
            .collect();
        let schema = Arc::new(datafusion::arrow::datatypes::Schema::new(fields));
        let table = Arc::new(crate::driver::table::SinkTable::new(p.clone(), schema));
        ctx.register_table("sink", Arc::clone(&table) as _)?;
        sink_table = Some(table);
    }
    for t in &c.tables {
        let (name, path) = t
            .split_once('=')
            .ok_or_else(|| config_error(format!("invalid --table `{t}`: expected NAME=PATH")))?;
        let spec = source::TableSpec {
            path: path.to_string(),
            format: None,
            version: None,
        };
        source::register_table(&ctx, name, &spec, &storage).await?;
    }
    if let Some(p) = loaded.as_ref().filter(|_| sink_table.is_some()) {
        check_insert_into_sink(&ctx, &c.query, p, c.allow_writes).await?;
    }
    let df = if c.allow_writes {
        ctx.sql(&c.query)
            .await
            .map_err(|e| anyhow!("{}", one_line(&e.to_string())))?
    } else {
        plan::read_only_sql(&ctx, &c.query)
            .await
            .map_err(|e| e.context("sql"))?
    };
    let batches = df.collect().await.map_err(|e| {
        // The sink's own errors (preflight, an unreachable index) keep their types.
        match e {
            datafusion::error::DataFusionError::External(inner) => anyhow!(inner),
            other => anyhow!("sql: {}", one_line(&other.to_string())),
        }
    })?;
    query::print(&batches, c.format)?;
    // An INSERT INTO sink ends as `run` does: its summary, and exit code 3 on dead letters.
    match sink_table.and_then(|t| t.summary()) {
        Some(mut summary) => {
            summary.tokens = embedder.tokens_seen();
            report_summary(&summary, None)
        }
        None => Ok(()),
    }
}
