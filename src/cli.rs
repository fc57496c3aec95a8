//! Command line: `run`, `validate`, `explain`, `query` and `sql`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand};

use crate::config::{Pipeline, SinkKind};
use crate::embed::{EmbedOptions, Embedder};
use crate::error::{PartialRun, config_error};
use crate::plan::{self, one_line};
use crate::query::{self, OutputFormat};
use crate::run::{self, RunOptions};

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
    #[command(subcommand)]
    pub command: Command,
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
    },
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
    /// Exact cosine top-k over a pipeline's Parquet output.
    Query {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// The text to search for.
        text: String,
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
    },
    /// Ad-hoc SQL with embed() and cosine_similarity() registered.
    Sql {
        /// The SQL statement.
        query: String,
        /// Register this pipeline's tables and use its model.
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
    },
}

pub async fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            pipeline,
            no_progress,
            summary_json,
        } => {
            let p = pipeline.load()?;
            let summary = run::run_pipeline(
                &p,
                &RunOptions {
                    progress: !no_progress && !cli.quiet,
                },
            )
            .await?;
            println!("embedflow: {summary}");
            if let Some(path) = summary_json {
                let json = serde_json::to_string_pretty(&summary)?;
                std::fs::write(&path, json)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            match summary.dead_letter {
                Some(dead_letter) if summary.rows_failed > 0 => Err(PartialRun {
                    rows_failed: summary.rows_failed,
                    dead_letter,
                }
                .into()),
                _ => Ok(()),
            }
        }
        Command::Validate { pipeline } => {
            let p = pipeline.load()?;
            let embedder = run::load_embedder(&p).await?;
            let plan = plan::build(&p, Arc::clone(&embedder)).await?;
            match p.sink.kind()? {
                SinkKind::Parquet(spec) => {
                    crate::storage::OutputLocation::for_parquet_sink(&spec.path, &p.storage)?
                        .check_writable()
                        .await?
                }
                SinkKind::Pinecone(spec) => {
                    let conn = crate::sink::pinecone::connect(spec, embedder.dim()).await?;
                    println!("sink: {} (key accepted, dimension matches)", conn.display);
                }
            }
            println!(
                "pipeline {} is valid: model {} ({} dimensions)",
                pipeline.pipeline.display(),
                embedder.model_name(),
                embedder.dim()
            );
            println!("output schema:");
            for f in plan.frame.schema().fields() {
                println!(
                    "  {}: {}{}",
                    f.name(),
                    f.data_type(),
                    if f.is_nullable() { "" } else { " not null" }
                );
            }
            Ok(())
        }
        Command::Explain { pipeline, physical } => {
            let p = pipeline.load()?;
            let embedder = run::load_embedder(&p).await?;
            let plan = plan::build(&p, embedder).await?;
            let explained = plan.frame.explain(false, false)?.collect().await?;
            for batch in explained {
                let kinds = batch.column(0);
                let plans = batch.column(1);
                let kinds = datafusion::arrow::array::AsArray::as_string::<i32>(kinds.as_ref());
                let plans = datafusion::arrow::array::AsArray::as_string::<i32>(plans.as_ref());
                for i in 0..batch.num_rows() {
                    let kind = kinds.value(i);
                    if kind.starts_with("physical") && !physical {
                        continue;
                    }
                    println!("{kind}:\n{}\n", plans.value(i));
                }
            }
            Ok(())
        }
        Command::Query {
            pipeline,
            text,
            k,
            format,
            width,
            filter,
            namespace,
        } => {
            let p = pipeline.load()?;
            if k == 0 {
                return Err(config_error("-k must be at least 1"));
            }
            let filter = filter
                .map(|f| {
                    serde_json::from_str::<serde_json::Value>(&f)
                        .map_err(|e| config_error(format!("--filter is not JSON: {e}")))
                })
                .transpose()?;
            let embedder = run::load_embedder(&p).await?;
            let width = (width > 0 && format == OutputFormat::Table).then_some(width);
            let batches = match p.sink.kind()? {
                SinkKind::Parquet(_) => {
                    if filter.is_some() || namespace.is_some() {
                        return Err(config_error(
                            "--filter and --namespace apply to a Pinecone sink; use `embedflow sql` to filter Parquet output",
                        ));
                    }
                    query::search(&p, embedder, &text, k, width).await?
                }
                SinkKind::Pinecone(spec) => {
                    let request = query::PineconeQuery {
                        k,
                        filter,
                        namespace: namespace.or_else(|| spec.namespace.clone()),
                        width,
                    };
                    query::search_pinecone(spec, &embedder, &text, &request).await?
                }
            };
            query::print(&batches, format)
        }
        Command::Sql {
            query: sql,
            pipeline,
            tables,
            model,
            format,
        } => {
            let loaded = match &pipeline {
                Some(path) => Some(Pipeline::load(path, &[])?),
                None => None,
            };
            let opts = match &loaded {
                Some(p) => EmbedOptions::from_spec(&p.embed),
                None => EmbedOptions::new(model),
            };
            let embedder = tokio::task::spawn_blocking(move || Embedder::load(&opts))
                .await
                .map_err(|e| anyhow!("model loading panicked: {e}"))??;
            let ctx = plan::session_context(Some(Arc::new(embedder)));
            if let Some(p) = &loaded {
                plan::register_tables(&ctx, &p.source, &p.storage).await?;
            }
            for t in &tables {
                let (name, path) = t.split_once('=').ok_or_else(|| {
                    config_error(format!("invalid --table `{t}`: expected NAME=PATH"))
                })?;
                let spec = crate::config::TableSpec {
                    path: path.to_string(),
                    format: None,
                };
                let storage = loaded
                    .as_ref()
                    .map(|p| p.storage.clone())
                    .unwrap_or_default();
                plan::register_table(&ctx, name, &spec, &storage).await?;
            }
            let df = ctx
                .sql(&sql)
                .await
                .map_err(|e| anyhow!("sql: {}", one_line(&e.to_string())))?;
            let batches = df
                .collect()
                .await
                .map_err(|e| anyhow!("sql: {}", one_line(&e.to_string())))?;
            query::print(&batches, format)
        }
    }
}
