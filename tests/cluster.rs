//! `run --cluster` on a real Ballista cluster on loopback: one `embedflow scheduler` and two
//! `embedflow executor` processes (one ONNX Runtime thread and one task slot each), started by
//! the test. The sample pipeline's output must equal a local run's, tasks must run on both
//! executors, and killing one executor mid-job must still end with every row written once.

mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pinecone_test_server::{IndexConfig, PineconeServer, ServerConfig};

const KEY: &str = "pc-test-key-cluster";
const SAMPLE_ROWS: usize = 3101;

/// One cluster at a time: the machine has two cores, and the kill test times its kill.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scheduler and executors, killed when dropped.
struct Cluster {
    port: u16,
    scheduler: Child,
    executors: Vec<Child>,
    logs: PathBuf,
}

fn spawn(dir: &Path, args: &[&str], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    embedflow_command(dir, args, &[("PINECONE_API_KEY", Some(KEY))])
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start embedflow")
}

impl Cluster {
    fn start(dir: &Path, executors: usize) -> Cluster {
        let port = free_port();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let bind = format!("127.0.0.1:{port}");
        let scheduler = spawn(
            dir,
            &["scheduler", "--bind", &bind, "--executor-timeout", "12"],
            &logs.join("scheduler.log"),
        );
        let mut cluster = Cluster {
            port,
            scheduler,
            executors: Vec::new(),
            logs,
        };
        cluster.wait_for("the scheduler's REST API", |c| {
            c.get("/api/executors").is_some()
        });
        for i in 0..executors {
            let ports = format!("{},{}", free_port(), free_port());
            let work = dir.join(format!("work-{i}"));
            std::fs::create_dir_all(&work).unwrap();
            let child = spawn(
                dir,
                &[
                    "executor",
                    "--scheduler",
                    &bind,
                    "--ports",
                    &ports,
                    "--threads",
                    "1",
                    "--task-slots",
                    "1",
                    "--work-dir",
                    work.to_str().unwrap(),
                ],
                &cluster.logs.join(format!("executor-{i}.log")),
            );
            cluster.executors.push(child);
        }
        cluster.wait_for("the executors to register", |c| {
            c.get("/api/executors")
                .and_then(|v| v.as_array().map(Vec::len))
                == Some(executors)
        });
        cluster
    }

    fn url(&self) -> String {
        format!("df://127.0.0.1:{}", self.port)
    }

    /// GET on the scheduler's REST API.
    fn get(&self, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let r = reqwest::get(&url).await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            r.json().await.ok()
        })
    }

    fn wait_for(&mut self, what: &str, ready: impl Fn(&Cluster) -> bool) {
        let start = Instant::now();
        while !ready(self) {
            if let Ok(Some(status)) = self.scheduler.try_wait() {
                panic!("the scheduler exited ({status}): {}", self.log("scheduler"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}; scheduler log:\n{}",
                self.log("scheduler")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn executor_pids(&self) -> Vec<u32> {
        self.executors.iter().map(Child::id).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn sample() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data/sample.parquet")
        .display()
        .to_string()
}

/// The quickstart pipeline over the bundled sample, writing to `sink`.
fn sample_pipeline(dir: &Path, name: &str, sink: &str) {
    let yaml = format!(
        "source:\n  tables:\n    docs: {{ path: {} }}\n  sql: \"SELECT id, section || ': ' || body AS text, chapter, url FROM docs\"\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n{sink}",
        sample()
    );
    write_file(dir, name, &yaml);
}

/// Every part of a Parquet output folder, as id -> vector; an id in two rows fails.
fn read_parts(folder: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            for (id, v) in read_vectors(&path) {
                assert!(out.insert(id.clone(), v).is_none(), "{id} written twice");
            }
        }
    }
    out
}

fn local_run(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    sample_pipeline(dir, "local.yaml", "  parquet: { path: local }\n");
    assert_ok(&embedflow(dir, &["run", "local.yaml", "--no-progress"]));
    let local = read_parts(&dir.join("local"));
    assert_eq!(local.len(), SAMPLE_ROWS);
    local
}

fn summary(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Each executor process wrote at least one partition.
fn assert_both_executors_wrote(s: &serde_json::Value, cluster: &Cluster) {
    let workers = s["partitions_by_worker"]
        .as_object()
        .unwrap_or_else(|| panic!("no partitions_by_worker: {s}"));
    for pid in cluster.executor_pids() {
        let wrote: u64 = workers
            .iter()
            .filter(|(w, _)| w.ends_with(&format!(":{pid}")))
            .map(|(_, n)| n.as_u64().unwrap())
            .sum();
        assert!(wrote > 0, "executor {pid} wrote no partition: {s}");
    }
}

/// The scheduler's REST API: the job completed, every task of every stage succeeded, and the
/// write stage ran one task per partition.
fn assert_job_completed(cluster: &Cluster, partitions: usize) {
    let jobs = cluster.get("/api/jobs").expect("GET /api/jobs");
    let jobs = jobs.as_array().expect("a list of jobs");
    let job = jobs.last().expect("one job");
    assert_eq!(job["status"], "Completed", "{job}");
    let id = job["job_id"].as_str().expect("job_id");
    let stages = cluster
        .get(&format!("/api/job/{id}/stages"))
        .expect("GET stages");
    let stages = stages["stages"].as_array().expect("stages");
    let mut task_counts = Vec::new();
    for stage in stages {
        let tasks = stage["tasks"].as_array().unwrap();
        for t in tasks.iter().filter(|t| !t.is_null()) {
            assert_eq!(t["status"], "Successful", "a task did not succeed: {t}");
        }
        task_counts.push(tasks.len());
    }
    assert!(
        task_counts.contains(&partitions),
        "a stage of {partitions} tasks (embed and write): {task_counts:?}"
    );
}

#[test]
fn the_sample_on_two_executors_equals_a_local_run() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let local = local_run(d);
    let cluster = Cluster::start(d, 2);

    // Parquet: one part per partition, published when the job succeeded.
    sample_pipeline(d, "c.yaml", "  parquet: { path: clustered }\n");
    let o = embedflow(
        d,
        &[
            "run",
            "c.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--partitions",
            "4",
            "--summary-json",
            "c.json",
        ],
    );
    assert_ok(&o);
    let s = summary(&d.join("c.json"));
    assert_eq!(s["rows_written"], SAMPLE_ROWS as u64, "{s}");
    assert_both_executors_wrote(&s, &cluster);
    assert_job_completed(&cluster, 4);
    let parts: Vec<_> = std::fs::read_dir(d.join("clustered"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        parts.iter().filter(|p| p.ends_with(".parquet")).count(),
        4,
        "{parts:?}"
    );
    assert!(
        !parts.iter().any(|p| p.contains("staging")),
        "no staging folder left: {parts:?}"
    );
    assert_same_vectors(&local, &read_parts(&d.join("clustered")), 1e-6);

    // Pinecone: each executor upserts its partitions with its own API key.
    let srv =
        PineconeServer::start(ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)])).unwrap();
    sample_pipeline(
        d,
        "pc.yaml",
        &format!(
            "  pinecone:\n    index: docs\n    controller: {}\n    metadata: [chapter]\n",
            srv.controller_url()
        ),
    );
    let o = embedflow_env(
        d,
        &[
            "run",
            "pc.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--summary-json",
            "pc.json",
        ],
        &[("PINECONE_API_KEY", Some(KEY))],
    );
    assert_ok(&o);
    let s = summary(&d.join("pc.json"));
    assert_eq!(s["rows_written"], SAMPLE_ROWS as u64, "{s}");
    assert_both_executors_wrote(&s, &cluster);
    assert_eq!(
        srv.vectors_upserted("docs"),
        SAMPLE_ROWS as u64,
        "each row sent once"
    );
    let records = srv.records("docs", "");
    assert!(
        records.values().all(|r| r.metadata.is_some()),
        "metadata sent"
    );
    let got = records.into_iter().map(|(id, r)| (id, r.values)).collect();
    assert_same_vectors(&local, &got, 1e-6);

    // The plan carried no secret: the executors used their own key. A wrong cluster address is
    // a clear error.
    let logs = cluster.log("scheduler") + &cluster.log("executor-0") + &cluster.log("executor-1");
    assert!(!logs.contains(KEY), "an API key in the cluster's logs");
    let o = embedflow(
        d,
        &[
            "run",
            "c.yaml",
            "--no-progress",
            "--cluster",
            "df://127.0.0.1",
        ],
    );
    assert_fails_with(&o, 2, "df://HOST:PORT");
    write_file(
        d,
        "s3.yaml",
        "source:\n  tables:\n    docs: { path: s3://bucket/docs.parquet }\nembed:\n  model: all-MiniLM-L6-v2\nsink:\n  parquet: { path: out }\n",
    );
    let o = embedflow(
        d,
        &[
            "run",
            "s3.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
        ],
    );
    assert_fails_with(
        &o,
        2,
        "source.tables.docs: s3://bucket/docs.parquet is on S3",
    );
}

#[test]
fn killing_an_executor_mid_job_still_writes_every_row_once() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let local = local_run(d);
    let mut cluster = Cluster::start(d, 2);
    sample_pipeline(d, "c.yaml", "  parquet: { path: clustered }\n");
    let mut run = embedflow_command(
        d,
        &[
            "run",
            "c.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--partitions",
            "8",
            "--summary-json",
            "c.json",
        ],
        &[],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();

    // Kill the second executor once the job's first parts are written: its running task and
    // the results it held are lost, and Ballista runs them again on the first executor.
    let start = Instant::now();
    let staged = |d: &Path| -> usize {
        let Ok(entries) = std::fs::read_dir(d.join("clustered")) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("staging"))
            .map(|e| std::fs::read_dir(e.path()).map(|r| r.count()).unwrap_or(0))
            .sum()
    };
    while staged(d) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no part was written"
        );
        assert!(run.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut victim = cluster.executors.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();

    let o = run.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the job failed after an executor was killed:\n{}\nscheduler:\n{}",
        String::from_utf8_lossy(&o.stderr),
        cluster.log("scheduler")
    );
    let s = summary(&d.join("c.json"));
    assert_eq!(s["rows_written"], SAMPLE_ROWS as u64, "{s}");
    // The survivor wrote the partitions the killed executor did not finish.
    let survivor = cluster.executor_pids()[0];
    assert!(
        s["partitions_by_worker"]
            .as_object()
            .unwrap()
            .keys()
            .any(|w| w.ends_with(&format!(":{survivor}"))),
        "{s}"
    );
    assert_same_vectors(&local, &read_parts(&d.join("clustered")), 1e-6);
}
