use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use embedflow::cli::{self, Cli, LogFormat};
use embedflow::error::{describe, exit, exit_code};
use embedflow::report;
use embedflow::signals::{self, Shutdown};
use tracing_subscriber::EnvFilter;

/// Keeps peak memory flat over long runs. glibc raises its mmap threshold each time a large
/// block is freed, after which the multi-megabyte Arrow buffers of every record batch come from the
/// heap, and fragment it: peak RSS then crept up 20% between 10k and 200k rows. A fixed 1 MiB
/// threshold keeps such buffers in their own mappings, returned to the system when dropped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; called before any other thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

fn init_logging(verbose: u8, quiet: bool, format: LogFormat) {
    let default = if quiet {
        "error"
    } else {
        match verbose {
            0 => "embedflow=info,warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        }
    };
    let filter = std::env::var("EMBEDFLOW_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => {
            report::set_json_logs();
            logs.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .init()
        }
    }
}

/// True when the error is a closed pipe (`embedflow sql ... | head`): not a failure.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || matches!(
                e.downcast_ref::<datafusion::arrow::error::ArrowError>(),
                Some(datafusion::arrow::error::ArrowError::IoError(_, io))
                    if io.kind() == std::io::ErrorKind::BrokenPipe
            )
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("embedflow-io")
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(async {
        let shutdown =
            Shutdown::install().map_err(|e| anyhow::anyhow!("cannot listen for signals: {e}"))?;
        cli::execute(cli, shutdown).await
    });
    runtime.shutdown_background();
    result
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet, cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(exit::OK as u8),
        Err(e) => {
            let e = embedflow::plan::memory::explain(e);
            let code = exit_code(&e);
            if report::json_logs() {
                tracing::error!(exit_code = code, "{}", describe(&e));
            } else {
                eprintln!("error: {}", describe(&e));
            }
            if code == exit::SIGINT || code == exit::SIGTERM {
                // ONNX Runtime may still be tearing down a session on another thread: leave
                // without running global destructors, so nothing else is printed.
                signals::exit_now(code);
            }
            ExitCode::from(code as u8)
        }
    }
}
