//! `pinecone-test-server`: run the Pinecone-compatible test server by hand.
//!
//! ```text
//! pinecone-test-server --port 5080 --api-key dev --index docs:384 --rate-429 0.1 --latency-ms 20
//! ```
//! Point embedflow at it with `controller: http://127.0.0.1:5080` (or a client at the printed
//! index host). It runs until interrupted.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use pinecone_test_server::{
    Faults, ImportStorage, IndexConfig, Metric, PineconeServer, ServerConfig,
};

#[derive(Parser)]
#[command(
    version,
    about = "A Pinecone-compatible HTTP server for tests and local development"
)]
struct Args {
    /// Control-plane port; each index gets the next free port.
    #[arg(long, default_value_t = 5080)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// The API key clients must send (default: $PINECONE_API_KEY).
    #[arg(long, env = "PINECONE_API_KEY", hide_env_values = true)]
    api_key: String,
    /// An index as NAME:DIMENSION[:METRIC] (cosine, euclidean, dotproduct); repeatable.
    #[arg(long = "index", value_parser = parse_index, required = true)]
    indexes: Vec<IndexConfig>,
    /// Share of data-plane requests answered 429.
    #[arg(long, default_value_t = 0.0)]
    rate_429: f64,
    /// `Retry-After` seconds sent with 429s.
    #[arg(long)]
    retry_after: Option<u64>,
    /// Share answered 500.
    #[arg(long, default_value_t = 0.0)]
    rate_500: f64,
    /// Share answered 503.
    #[arg(long, default_value_t = 0.0)]
    rate_503: f64,
    /// Share whose connection is dropped without an answer.
    #[arg(long, default_value_t = 0.0)]
    rate_drop: f64,
    /// Latency added to every data-plane request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Inject faults only on this path (e.g. /vectors/upsert); repeatable. Default: all.
    #[arg(long = "fault-path")]
    fault_paths: Vec<String>,
    /// S3-compatible endpoint bulk imports read from, with $AWS_ACCESS_KEY_ID and
    /// $AWS_SECRET_ACCESS_KEY (e.g. http://127.0.0.1:9000).
    #[arg(long)]
    import_s3_endpoint: Option<String>,
}

fn parse_index(s: &str) -> Result<IndexConfig, String> {
    let mut parts = s.split(':');
    let name = parts.next().filter(|n| !n.is_empty()).ok_or("empty name")?;
    let dim = parts
        .next()
        .ok_or("expected NAME:DIMENSION[:METRIC]")?
        .parse::<usize>()
        .map_err(|e| format!("bad dimension: {e}"))?;
    let mut index = IndexConfig::new(name, dim);
    if let Some(m) = parts.next() {
        index.metric = m.parse::<Metric>()?;
    }
    Ok(index)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let rates = args.rate_429 + args.rate_500 + args.rate_503 + args.rate_drop;
    if !(0.0..=1.0).contains(&rates) {
        eprintln!("error: fault rates must be between 0 and 1 and sum to at most 1");
        std::process::exit(2);
    }
    let config = ServerConfig {
        api_key: args.api_key,
        indexes: args.indexes,
        faults: Faults {
            rate_429: args.rate_429,
            rate_500: args.rate_500,
            rate_503: args.rate_503,
            rate_drop: args.rate_drop,
            retry_after_secs: args.retry_after,
            latency: Duration::from_millis(args.latency_ms),
            paths: args.fault_paths,
        },
        bind: SocketAddr::new(args.host, args.port),
        import_storage: args.import_s3_endpoint.map(|endpoint| {
            let var = |name: &str| std::env::var(name).unwrap_or_default();
            ImportStorage::new(
                &endpoint,
                &var("AWS_ACCESS_KEY_ID"),
                &var("AWS_SECRET_ACCESS_KEY"),
            )
        }),
    };
    let names: Vec<String> = config.indexes.iter().map(|i| i.name.clone()).collect();
    let server = match PineconeServer::bind(config).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen on {}:{}: {e}", args.host, args.port);
            std::process::exit(1);
        }
    };
    println!("control plane {}", server.controller_url());
    for name in &names {
        if let Some(url) = server.index_url(name) {
            println!("index {name} {url}");
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    let c = server.fault_counts();
    eprintln!(
        "{} data-plane requests; injected {} x 429, {} x 500, {} x 503, {} dropped",
        c.requests, c.throttled, c.internal, c.unavailable, c.dropped
    );
}
