use std::io::IsTerminal;

use clap::Parser;
use embedflow::cli::{self, Cli};
use embedflow::error::{exit, exit_code, redact};
use tracing_subscriber::EnvFilter;

fn init_logging(verbose: u8, quiet: bool) {
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
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("embedflow-io")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(exit::FAILED);
        }
    };
    let result = runtime.block_on(cli::execute(cli));
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::exit(exit::OK),
        Err(e) => {
            eprintln!("error: {}", redact(&format!("{e:#}")));
            std::process::exit(exit_code(&e));
        }
    }
}
