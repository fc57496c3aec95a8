//! A Ballista cluster of one scheduler and N executors on this machine (`embedflow scheduler`
//! and `embedflow executor`), for the benchmarks that compare a local run with a cluster run.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The processes of a loopback cluster; dropping it stops them.
pub struct Loopback {
    children: Vec<Child>,
    /// The scheduler's port (gRPC and its REST API).
    pub port: u16,
    /// `df://127.0.0.1:PORT`, for `embedflow run --cluster`.
    pub url: String,
}

impl Loopback {
    /// Starts a scheduler and `executors` executors (each with one task slot and `threads` ONNX
    /// Runtime threads), in `dir`, and waits until every executor has registered.
    pub fn start(dir: &Path, executors: usize, threads: usize) -> Result<Loopback> {
        let port = free_port()?;
        let bind = format!("127.0.0.1:{port}");
        let spawn = |args: &[&str]| -> Result<Child> {
            Ok(Command::new(env!("CARGO_BIN_EXE_embedflow"))
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?)
        };
        let mut cluster = Loopback {
            children: vec![spawn(&["scheduler", "--bind", &bind])?],
            port,
            url: format!("df://{bind}"),
        };
        for _ in 0..executors {
            let ports = format!("{},{}", free_port()?, free_port()?);
            let threads = threads.to_string();
            cluster.children.push(spawn(&[
                "executor",
                "--scheduler",
                &bind,
                "--ports",
                &ports,
                "--threads",
                &threads,
                "--task-slots",
                "1",
            ])?);
        }
        cluster.wait_for_executors(executors)?;
        Ok(cluster)
    }

    /// Polls the scheduler's REST API until `n` executors are registered (at most a minute).
    fn wait_for_executors(&self, n: usize) -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let url = format!("http://127.0.0.1:{}/api/executors", self.port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            let registered = rt.block_on(async {
                let v: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
                v.as_array().map(Vec::len)
            });
            if registered.is_some_and(|r| r >= n) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("{n} executors did not register with the scheduler within a minute")
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
