//! `run --cluster` on a real Ballista cluster on loopback: one `embedflow scheduler` and two
//! `embedflow executor` processes (one ONNX Runtime thread and one task slot each), started by
//! the test. The sample pipeline's output must equal a local run's, tasks must run on both
//! executors, and killing one executor mid-job must still end with every row written once.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use pinecone_test_server::{Faults, IndexConfig, PineconeServer, ServerConfig};

const KEY: &str = "pc-test-key-cluster";

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

fn spawn(dir: &Path, args: &[&str], log: &Path, env: &[(&str, Option<&str>)]) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut all = vec![("PINECONE_API_KEY", Some(KEY))];
    all.extend_from_slice(env);
    embedflow_command(dir, args, &all)
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .expect("start embedflow")
}

impl Cluster {
    fn start(dir: &Path, executors: usize) -> Cluster {
        Cluster::start_with_env(dir, executors, &[])
    }

    /// A cluster whose executors also have `env` (their own credentials).
    fn start_with_env(dir: &Path, executors: usize, env: &[(&str, Option<&str>)]) -> Cluster {
        let port = free_port();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let bind = format!("127.0.0.1:{port}");
        let scheduler = spawn(
            dir,
            &["scheduler", "--bind", &bind, "--executor-timeout", "12"],
            &logs.join("scheduler.log"),
            &[],
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
                env,
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
                start.elapsed() < Duration::from_secs(180),
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

/// The quickstart pipeline over the bundled sample, writing to `sink`.
fn sample_pipeline(dir: &Path, name: &str, sink: &str) {
    sample_pipeline_on(dir, name, sink, &sample());
}

/// The quickstart pipeline over `table` (the sample's columns), writing to `sink`.
///
/// Every pipeline here cuts texts at 32 word pieces (`max_seq_length: 32`): what the cluster
/// must get right (partitions, retries, state, sinks) does not depend on a text's length, and
/// the sample's paragraphs cost about a third of their inference so (75 word pieces on average).
fn sample_pipeline_on(dir: &Path, name: &str, sink: &str, table: &str) {
    let yaml = format!(
        "source:\n  tables:\n    docs: {{ path: {table} }}\n  sql: \"SELECT id, section || ': ' || body AS text, chapter, url FROM docs\"\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  max_seq_length: 32\nsink:\n{sink}"
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

/// The pipeline over `table` (`rows` rows) run locally into `local/`.
fn local_run(dir: &Path, table: &str, rows: usize) -> BTreeMap<String, Vec<f32>> {
    sample_pipeline_on(dir, "local.yaml", "  parquet: { path: local }\n", table);
    assert_ok(&embedflow(dir, &["run", "local.yaml", "--no-progress"]));
    let local = read_parts(&dir.join("local"));
    assert_eq!(local.len(), rows);
    local
}

/// Starts `run c.yaml --cluster ... --partitions 8 [extra]` in the background, output captured.
fn spawn_cluster_run(d: &Path, cluster: &Cluster, extra: &[&str]) -> Child {
    let url = cluster.url();
    let mut args = vec![
        "run",
        "c.yaml",
        "--no-progress",
        "--cluster",
        url.as_str(),
        "--partitions",
        "8",
    ];
    args.extend_from_slice(extra);
    embedflow_command(d, &args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
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
    // The run's jobs: the id checks (aggregates over the source) and the embedding job.
    let jobs = cluster.get("/api/jobs").expect("GET /api/jobs");
    let jobs = jobs.as_array().expect("a list of jobs");
    assert!(!jobs.is_empty(), "no job");
    let mut task_counts = Vec::new();
    for job in jobs {
        assert_eq!(job["status"], "Completed", "{job}");
        let id = job["job_id"].as_str().expect("job_id");
        let stages = cluster
            .get(&format!("/api/job/{id}/stages"))
            .expect("GET stages");
        let stages = stages["stages"].as_array().expect("stages");
        for stage in stages {
            let tasks = stage["tasks"].as_array().unwrap();
            for t in tasks.iter().filter(|t| !t.is_null()) {
                assert_eq!(t["status"], "Successful", "a task did not succeed: {t}");
            }
            task_counts.push(tasks.len());
        }
    }
    assert!(
        task_counts.contains(&partitions),
        "a stage of {partitions} tasks (embed and write): {task_counts:?}"
    );
}

#[test]
fn the_sample_on_two_executors_equals_a_local_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Every 10th paragraph (311 rows): 4 partitions of several micro-batches on 2 executors.
    let (table, rows) = sample_subset(d, 10);
    let local = local_run(d, &table, rows);
    let cluster = Cluster::start(d, 2);

    // Parquet: one part per partition, published when the job succeeded. What a killed client
    // left (a staging folder) is removed.
    sample_pipeline_on(d, "c.yaml", "  parquet: { path: clustered }\n", &table);
    let stale = d.join("clustered/.embedflow-staging-1-2");
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join(".task-1-0.parquet"), b"half a part").unwrap();
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
    assert_eq!(s["rows_written"], rows as u64, "{s}");
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
    sample_pipeline_on(
        d,
        "pc.yaml",
        &format!(
            "  pinecone:\n    index: docs\n    controller: {}\n    metadata: [chapter]\n",
            srv.controller_url()
        ),
        &table,
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
    assert_eq!(s["rows_written"], rows as u64, "{s}");
    assert_both_executors_wrote(&s, &cluster);
    assert_eq!(
        srv.vectors_upserted("docs"),
        rows as u64,
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
}

#[test]
fn killing_an_executor_mid_job_still_writes_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Every 6th paragraph (517 rows): 8 partitions of several micro-batches each, so the job is
    // in the middle when the first part is staged.
    let (table, rows) = sample_subset(d, 6);
    let local = local_run(d, &table, rows);
    let mut cluster = Cluster::start(d, 2);
    sample_pipeline_on(d, "c.yaml", "  parquet: { path: clustered }\n", &table);
    let mut run = spawn_cluster_run(d, &cluster, &["--summary-json", "c.json"]);

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
    assert_eq!(s["rows_written"], rows as u64, "{s}");
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

/// 160 paragraphs of the sample as `id`, `text` and `chapter` (metadata): a table a user points
/// a pipeline at without SQL.
fn small_table(dir: &Path) -> PathBuf {
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    const ROWS: usize = 160;
    let sample = PathBuf::from(sample());
    let ids = read_text_column(&sample, "id");
    let bodies = read_text_column(&sample, "body");
    let chapters = read_text_column(&sample, "chapter");
    // Every 19th paragraph: long and short ones, from every chapter.
    let pick =
        |c: &Vec<String>| -> Vec<String> { c.iter().step_by(19).take(ROWS).cloned().collect() };
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("chapter", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(StringArray::from(pick(&ids))),
        std::sync::Arc::new(StringArray::from(pick(&bodies))),
        std::sync::Arc::new(StringArray::from(pick(&chapters))),
    ];
    let path = dir.join("small.parquet");
    write_batch(&path, RecordBatch::try_new(schema, cols).unwrap());
    path
}

/// Every part of a Parquet output folder, as id -> chapter (the metadata column).
fn read_chapters(folder: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "parquet") {
            let ids = read_text_column(&path, "id");
            let chapters = read_text_column(&path, "chapter");
            out.extend(ids.into_iter().zip(chapters));
        }
    }
    out
}

/// Every part's sparse vectors (`embed.sparse`), as id -> sparse vector; empty without them.
fn read_parts_sparse(folder: &Path) -> BTreeMap<String, embedflow::embed::bm25::Sparse> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let has_sparse = path.extension().is_some_and(|e| e == "parquet")
            && read_batches(&path)
                .first()
                .is_some_and(|b| b.column_by_name("sparse_values").is_some());
        if has_sparse {
            out.extend(read_sparse(&path));
        }
    }
    out
}

/// Runs `yaml` locally into `local/` and on the cluster into `clustered/`, and checks both
/// give the same rows, vectors, metadata and summary counts.
fn assert_cluster_equals_local(d: &Path, cluster: &Cluster, name: &str, yaml: &str) {
    let local_dir = format!("local-{name}");
    let cluster_dir = format!("clustered-{name}");
    write_file(
        d,
        "local.yaml",
        &format!("{yaml}sink:\n  parquet: {{ path: {local_dir} }}\n"),
    );
    write_file(
        d,
        "c.yaml",
        &format!("{yaml}sink:\n  parquet: {{ path: {cluster_dir} }}\n"),
    );
    let o = embedflow(
        d,
        &[
            "run",
            "local.yaml",
            "--no-progress",
            "--summary-json",
            "l.json",
        ],
    );
    assert_ok(&o);
    let o = embedflow(
        d,
        &[
            "run",
            "c.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--partitions",
            "3",
            "--summary-json",
            "c.json",
        ],
    );
    assert_ok(&o);
    let local = read_parts(&d.join(&local_dir));
    assert!(local.len() >= 100, "{name}: {} rows", local.len());
    assert_same_vectors(&local, &read_parts(&d.join(&cluster_dir)), 1e-6);
    assert_eq!(
        read_chapters(&d.join(&local_dir)),
        read_chapters(&d.join(&cluster_dir)),
        "{name}: the metadata"
    );
    let (local_sparse, cluster_sparse) = (
        read_parts_sparse(&d.join(&local_dir)),
        read_parts_sparse(&d.join(&cluster_dir)),
    );
    assert_eq!(
        local_sparse.keys().collect::<Vec<_>>(),
        cluster_sparse.keys().collect::<Vec<_>>(),
        "{name}: rows with sparse vectors"
    );
    for (id, want) in &local_sparse {
        let got = &cluster_sparse[id];
        assert_eq!(got.indices, want.indices, "{name}: {id}: sparse indices");
        for (g, w) in got.values.iter().zip(&want.values) {
            assert!(
                (g - w).abs() < 1e-6,
                "{name}: {id}: sparse value {g} != {w}"
            );
        }
    }
    let (l, c) = (summary(&d.join("l.json")), summary(&d.join("c.json")));
    for field in [
        "rows_read",
        "rows_embedded",
        "rows_written",
        "rows_skipped",
        "tokens",
    ] {
        assert_eq!(l[field], c[field], "{name}: {field}: local {l} cluster {c}");
    }
}

#[test]
fn pipelines_of_every_shape_run_on_the_cluster_as_locally() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = small_table(d);
    let cluster = Cluster::start(d, 2);
    let source = format!(
        "source:\n  tables:\n    docs: {{ path: {} }}\n",
        table.display()
    );
    let model = "embed:\n  model: all-MiniLM-L6-v2\n  id: id\n  max_seq_length: 32\n";
    // A plain text column, no SQL (DataFusion pushes embed() into the Parquet scan).
    assert_cluster_equals_local(d, &cluster, "plain", &format!("{source}{model}"));
    // An SQL expression.
    assert_cluster_equals_local(
        d,
        &cluster,
        "sql",
        &format!(
            "{source}  sql: \"SELECT id, chapter || ': ' || upper(text) AS text, chapter FROM docs\"\n{model}"
        ),
    );
    // Chunking: the chunks are cut on the executors, with the model's tokenizer.
    assert_cluster_equals_local(
        d,
        &cluster,
        "chunks",
        &format!("{source}{model}  chunking: {{ max_tokens: 24, overlap: 4 }}\n"),
    );
    // A document prompt, Matryoshka dimensions and BM25 sparse vectors: the client fits BM25
    // on the source and the executors weigh their rows with its parameters.
    assert_cluster_equals_local(
        d,
        &cluster,
        "hybrid",
        &format!("{source}{model}  prompt: \"passage: \"\n  dimensions: 128\n  sparse: bm25\n"),
    );
    assert!(
        !read_parts_sparse(&d.join("clustered-hybrid")).is_empty(),
        "the cluster wrote sparse vectors"
    );
    // Vectors read from a table (embed.vector): no model anywhere.
    let vectors = d.join("local-plain");
    assert_cluster_equals_local(
        d,
        &cluster,
        "vectors",
        &format!(
            "source:\n  tables:\n    docs: {{ path: {} }}\nembed:\n  vector: vector\n  id: id\n",
            vectors.display()
        ),
    );
}

/// The S3 server's credentials as a user's environment would hold them, without its endpoint.
fn s3_keys_without_endpoint(s3: &crate::common::s3::S3Server) -> Vec<(&'static str, String)> {
    s3.env()
        .into_iter()
        .filter(|(k, _)| k.starts_with("AWS_") && *k != "AWS_ENDPOINT_URL")
        .collect()
}

#[test]
fn an_s3_source_and_output_run_on_the_cluster_as_locally() {
    use crate::common::s3::S3Server;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = small_table(d);
    let s3 = S3Server::start();
    s3.bucket("lake");
    s3.put_file("lake", "docs/small.parquet", &table);
    // The executors have credentials of their own and no endpoint: the pipeline's
    // storage.s3.endpoint travels with the job.
    let keys = s3_keys_without_endpoint(&s3);
    let env: Vec<(&str, Option<&str>)> = keys.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    let cluster = Cluster::start_with_env(d, 2, &env);
    let yaml = |out: &str| {
        format!(
            "storage:\n  s3: {{ endpoint: \"{}\" }}\nsource:\n  tables:\n    docs: {{ path: s3://lake/docs/small.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  max_seq_length: 32\nsink:\n  parquet: {{ path: {out} }}\n",
            s3.endpoint
        )
    };
    write_file(d, "local.yaml", &yaml("local"));
    assert_ok(&embedflow_env(
        d,
        &["run", "local.yaml", "--no-progress"],
        &env,
    ));
    write_file(d, "c.yaml", &yaml("s3://lake/vectors"));
    let o = embedflow_env(
        d,
        &[
            "run",
            "c.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--partitions",
            "3",
        ],
        &env,
    );
    assert_ok(&o);
    let parts: Vec<String> = s3
        .keys("lake")
        .into_iter()
        .filter(|k| k.starts_with("vectors/"))
        .collect();
    assert_eq!(
        parts.len(),
        3,
        "one part per partition, no staging left: {parts:?}"
    );
    let mut got = BTreeMap::new();
    for key in &parts {
        for (id, v) in read_vectors(&s3.object("lake", key).unwrap()) {
            assert!(got.insert(id.clone(), v).is_none(), "{id} twice");
        }
    }
    assert_same_vectors(&read_parts(&d.join("local")), &got, 1e-6);
    let logs = cluster.log("executor-0") + &cluster.log("executor-1");
    assert!(
        !logs.contains(crate::common::s3::SECRET_KEY),
        "a secret in the executors' logs"
    );
}

#[test]
fn a_cluster_without_executors_says_so_and_gives_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = small_table(d);
    let cluster = Cluster::start(d, 0);
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml(&table.display().to_string(), "out", ""),
    );
    let o = embedflow(
        d,
        &[
            "run",
            "p.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--wait-for-executors",
            "2",
        ],
    );
    assert_fails_with(&o, 1, "no executor registered with the scheduler");
    assert!(
        stderr(&o).contains("waiting for executors"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("out").exists() || std::fs::read_dir(d.join("out")).unwrap().count() == 0);
}

#[test]
fn an_executor_without_its_scheduler_backs_off_and_stops_on_the_first_signal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let nobody = format!("127.0.0.1:{}", free_port());
    let ports = format!("{},{}", free_port(), free_port());
    let log = d.join("executor.log");
    let mut child = spawn(
        d,
        &["executor", "--scheduler", &nobody, "--ports", &ports],
        &log,
        &[],
    );
    let start = Instant::now();
    let tries = |log: &Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("cannot be reached")
            .count()
    };
    while tries(&log) < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no retry logged");
        assert!(
            child.try_wait().unwrap().is_none(),
            "it exited: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Backing off: far fewer tries than one every 0.5 s.
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        tries(&log) as f64 <= 2.0 + elapsed / 0.5,
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            stopped.elapsed() < STOP_WITHIN,
            "the first SIGTERM did not stop it"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(143));
}

#[test]
fn a_stopped_client_cancels_its_job() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cluster = Cluster::start(d, 1);
    sample_pipeline(d, "c.yaml", "  parquet: { path: clustered }\n");
    let mut run = spawn_cluster_run(d, &cluster, &[]);
    let running = |c: &Cluster| {
        c.get("/api/jobs")
            .and_then(|j| j.as_array().cloned())
            .is_some_and(|jobs| jobs.iter().any(|j| j["status"] == "Running"))
    };
    let start = Instant::now();
    while !running(&cluster) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job never ran"
        );
        assert!(run.try_wait().unwrap().is_none(), "the client ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(run.id() as i32, libc::SIGTERM) }, 0);
    let stopped = Instant::now();
    let o = run.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(143),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stopped.elapsed() < STOP_WITHIN,
        "took {:?}",
        stopped.elapsed()
    );
    // The scheduler no longer runs it: no executor picks it up later.
    let start = Instant::now();
    while running(&cluster) {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job still runs: {:?}",
            cluster.get("/api/jobs")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let left: Vec<_> = std::fs::read_dir(d.join("clustered"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing published, no staging: {left:?}");
}

/// The small table's second day: 3 texts edited, 2 chapters changed (metadata only), 2 rows
/// deleted, 3 added.
fn change_small_table(path: &Path) {
    use datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut ids = read_text_column(path, "id");
    let mut texts = read_text_column(path, "text");
    let mut chapters = read_text_column(path, "chapter");
    for i in [3, 33, 63] {
        texts[i] = format!("{} (revised)", texts[i]);
    }
    for i in [5, 55] {
        chapters[i] = format!("{} (moved)", chapters[i]);
    }
    for i in [150, 100] {
        ids.remove(i);
        texts.remove(i);
        chapters.remove(i);
    }
    for k in 0..3 {
        ids.push(format!("added-{k}"));
        texts.push(format!(
            "an added paragraph, number {k}, about whales and ships"
        ));
        chapters.push("added".into());
    }
    let schema = std::sync::Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, true),
        Field::new("chapter", DataType::Utf8, true),
    ]));
    let cols: Vec<ArrayRef> = vec![
        std::sync::Arc::new(StringArray::from(ids)),
        std::sync::Arc::new(StringArray::from(texts)),
        std::sync::Arc::new(StringArray::from(chapters)),
    ];
    write_batch(path, RecordBatch::try_new(schema, cols).unwrap());
}

fn incremental_counts(s: &serde_json::Value) -> [u64; 5] {
    let i = &s["incremental"];
    ["new", "changed", "metadata_only", "unchanged", "deleted"].map(|k| {
        i[k].as_u64()
            .unwrap_or_else(|| panic!("no incremental.{k}: {s}"))
    })
}

#[test]
fn incremental_pipelines_run_on_the_cluster_as_locally() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = small_table(d);
    let cluster = Cluster::start(d, 2);
    let srv =
        PineconeServer::start(ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)])).unwrap();
    let head = format!(
        "source:\n  tables:\n    docs: {{ path: {} }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  max_seq_length: 32\n",
        table.display()
    );
    let parquet = |out: &str, state: &str| {
        format!(
            "{head}sink:\n  parquet: {{ path: {out} }}\nincremental:\n  state: {state}\n  deletes: true\n"
        )
    };
    write_file(d, "local.yaml", &parquet("local", "state-local"));
    write_file(d, "c.yaml", &parquet("clustered", "state-cluster"));
    write_file(
        d,
        "pc.yaml",
        &format!(
            "{head}sink:\n  pinecone:\n    index: docs\n    controller: {}\n    metadata: [chapter]\nincremental:\n  state: state-pinecone\n  deletes: true\n",
            srv.controller_url()
        ),
    );
    let url = cluster.url();
    let on_cluster = |yaml: &str, json: &str| {
        let o = embedflow_env(
            d,
            &[
                "run",
                yaml,
                "--no-progress",
                "--cluster",
                &url,
                "--partitions",
                "3",
                "--summary-json",
                json,
            ],
            &[("PINECONE_API_KEY", Some(KEY))],
        );
        assert_ok(&o);
        summary(&d.join(json))
    };
    // Day 1 (every row new), day 2 (changes), day 3 (nothing changed).
    let expected = [[160, 0, 0, 0, 0], [3, 3, 2, 153, 2], [0, 0, 0, 161, 0]];
    for (day, counts) in expected.iter().enumerate() {
        if day == 1 {
            change_small_table(&table);
        }
        let o = embedflow(
            d,
            &[
                "run",
                "local.yaml",
                "--no-progress",
                "--summary-json",
                "l.json",
            ],
        );
        assert_ok(&o);
        let l = summary(&d.join("l.json"));
        let c = on_cluster("c.yaml", "c.json");
        let p = on_cluster("pc.yaml", "p.json");
        for (name, s) in [("local", &l), ("cluster", &c), ("cluster pinecone", &p)] {
            assert_eq!(
                &incremental_counts(s),
                counts,
                "day {}: {name}: {s}",
                day + 1
            );
        }
        for field in ["rows_read", "rows_embedded", "rows_written", "tokens"] {
            assert_eq!(
                l[field],
                c[field],
                "day {}: {field}: local {l} cluster {c}",
                day + 1
            );
        }
        assert_eq!(
            l["rows_embedded"],
            p["rows_embedded"],
            "day {}: {p}",
            day + 1
        );
        assert_eq!(l["tokens"], p["tokens"], "day {}: {p}", day + 1);
        // The same rows, vectors and metadata everywhere.
        let local = read_parts(&d.join("local"));
        assert_eq!(
            local.len(),
            if day == 0 { 160 } else { 161 },
            "day {}",
            day + 1
        );
        assert_same_vectors(&local, &read_parts(&d.join("clustered")), 1e-6);
        assert_eq!(
            read_chapters(&d.join("local")),
            read_chapters(&d.join("clustered")),
            "day {}: the metadata",
            day + 1
        );
        let records = srv.records("docs", "");
        let chapters: BTreeMap<String, String> = records
            .iter()
            .map(|(id, r)| {
                let chapter = r.metadata.as_ref().and_then(|m| m.get("chapter"));
                (
                    id.clone(),
                    chapter.and_then(|c| c.as_str()).unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(
            read_chapters(&d.join("local")),
            chapters,
            "day {}: the index's metadata",
            day + 1
        );
        let got = records.into_iter().map(|(id, r)| (id, r.values)).collect();
        assert_same_vectors(&local, &got, 1e-6);
    }
    // No task left a staged checkpoint behind; the cluster's state folders hold one base each.
    for state in ["state-cluster", "state-pinecone"] {
        let names: Vec<String> = std::fs::read_dir(d.join(state))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names
                .iter()
                .any(|n| n.starts_with("pending-") || n.starts_with("delta-")),
            "{state}: {names:?}"
        );
    }
}

/// Starts `run pc.yaml --cluster ...` in the background with the Pinecone key.
fn spawn_pinecone_run(d: &Path, cluster: &Cluster, extra: &[&str]) -> Child {
    let url = cluster.url();
    let mut args = vec!["run", "pc.yaml", "--no-progress", "--cluster", url.as_str()];
    args.extend_from_slice(extra);
    embedflow_command(d, &args, &[("PINECONE_API_KEY", Some(KEY))])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_until(what: &str, run: &mut Child, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "{what}: timed out"
        );
        assert!(
            run.try_wait().unwrap().is_none(),
            "{what}: the run ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_succeeded(run: Child, cluster: &Cluster) {
    let o = run.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the run failed:\n{}\nscheduler:\n{}",
        String::from_utf8_lossy(&o.stderr),
        cluster.log("scheduler")
    );
}

#[test]
fn an_incremental_index_survives_a_killed_executor_and_a_killed_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Every 6th paragraph (517 rows): the killed client dies once a checkpoint is recorded,
    // well before the end. The index paces the runs whatever the machine's speed: 100 ms a
    // request of 10 vectors, one request at a time per executor (about 5 s for the --full run
    // on the one executor left, against a checkpoint a second).
    let (table, rows) = sample_subset(d, 6);
    let mut cluster = Cluster::start(d, 2);
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)]);
    config.faults = Faults {
        latency: Duration::from_millis(100),
        ..Faults::default()
    };
    let srv = PineconeServer::start(config).unwrap();
    sample_pipeline_on(
        d,
        "pc.yaml",
        &format!(
            "  pinecone:\n    index: docs\n    controller: {}\n    metadata: [chapter]\n    batch_size: 10\n    concurrency: 1\nincremental:\n  state: state\n  checkpoint_secs: 1\n",
            srv.controller_url()
        ),
        &table,
    );

    // 1. An executor killed once vectors land: Ballista runs its tasks again on the other.
    let mut run = spawn_pinecone_run(d, &cluster, &["--summary-json", "1.json"]);
    wait_until("the first upserts", &mut run, || {
        srv.vectors_upserted("docs") > 0
    });
    let mut victim = cluster.executors.remove(1);
    victim.kill().unwrap();
    victim.wait().unwrap();
    assert_succeeded(run, &cluster);
    let first = srv.records("docs", "");
    assert_eq!(first.len(), rows, "every id once");
    let s = summary(&d.join("1.json"));
    assert_eq!(incremental_counts(&s), [rows as u64, 0, 0, 0, 0], "{s}");

    // 2. A client killed (SIGKILL: no clean-up) in the middle of a --full run, then run again:
    // the re-run takes the dead client's lock and embeds what the state does not record.
    // A checkpoint is a `delta-` file in the state folder (`checkpoint_secs: 1`).
    let checkpointed = || {
        std::fs::read_dir(d.join("state")).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("delta-"))
        })
    };
    assert!(!checkpointed(), "the first run folded its checkpoints");
    let mut run = spawn_pinecone_run(d, &cluster, &["--full"]);
    wait_until("a checkpoint of the --full run", &mut run, checkpointed);
    run.kill().unwrap();
    run.wait().unwrap();
    let rerun = spawn_pinecone_run(d, &cluster, &["--summary-json", "2.json"]);
    assert_succeeded(rerun, &cluster);
    let s = summary(&d.join("2.json"));
    let embedded = s["rows_embedded"].as_u64().unwrap();
    assert!(
        embedded < rows as u64,
        "the re-run resumed from the killed run's checkpoints: {s}"
    );
    let after = srv.records("docs", "");
    assert_eq!(after.len(), rows, "every id once");
    let got = after.into_iter().map(|(id, r)| (id, r.values)).collect();
    let want = first.into_iter().map(|(id, r)| (id, r.values)).collect();
    assert_same_vectors(&want, &got, 1e-6);

    // 3. The state matches the index: nothing is left to embed.
    let o = embedflow_env(
        d,
        &[
            "run",
            "pc.yaml",
            "--no-progress",
            "--cluster",
            &cluster.url(),
            "--summary-json",
            "3.json",
        ],
        &[("PINECONE_API_KEY", Some(KEY))],
    );
    assert_ok(&o);
    let s = summary(&d.join("3.json"));
    assert_eq!(incremental_counts(&s), [0, 0, 0, rows as u64, 0], "{s}");
    assert_eq!(s["rows_embedded"], 0, "{s}");
}

#[test]
fn a_bulk_import_on_the_cluster_has_each_task_write_its_files_then_one_import() {
    use crate::common::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
    use pinecone_test_server::ImportStorage;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let table = small_table(d);
    let s3 = S3Server::start();
    s3.bucket("imports");
    let mut config = ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)]);
    config.import_storage = Some(ImportStorage::new(&s3.endpoint, ACCESS_KEY, SECRET_KEY));
    let srv = PineconeServer::start(config).unwrap();
    // The executors have the keys; the endpoint travels with the pipeline.
    let keys = s3_keys_without_endpoint(&s3);
    let mut env: Vec<(&str, Option<&str>)> =
        keys.iter().map(|(k, v)| (*k, Some(v.as_str()))).collect();
    env.push(("PINECONE_API_KEY", Some(KEY)));
    let cluster = Cluster::start_with_env(d, 2, &env);
    let yaml = |namespace: &str, prefix: &str, state: &str| {
        format!(
            "storage:\n  s3: {{ endpoint: \"{}\" }}\nsource:\n  tables:\n    docs: {{ path: {} }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  max_seq_length: 32\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n    namespace: {namespace}\n    metadata: [chapter]\n    import:\n      uri: s3://imports/{prefix}/\n      file_rows: 25\nincremental:\n  state: {state}\n  deletes: true\n",
            s3.endpoint,
            table.display(),
            srv.controller_url()
        )
    };
    // The reference: the same import from a local run.
    write_file(d, "local.yaml", &yaml("local", "local", "state-local"));
    assert_ok(&embedflow_env(
        d,
        &["run", "local.yaml", "--no-progress"],
        &env,
    ));
    write_file(d, "c.yaml", &yaml("backfill", "docs", "state-cluster"));
    let url = cluster.url();
    let run = |json: &str| {
        embedflow_env(
            d,
            &[
                "run",
                "c.yaml",
                "--no-progress",
                "--cluster",
                &url,
                "--partitions",
                "3",
                "--summary-json",
                json,
            ],
            &env,
        )
    };
    let o = run("first.json");
    assert_ok(&o);
    let s = summary(&d.join("first.json"));
    assert_eq!(s["rows_written"], 160, "{s}");
    assert!(
        s["output"]
            .as_str()
            .unwrap_or("")
            .contains("through import"),
        "{s}"
    );
    assert_both_executors_wrote(&s, &cluster);
    // Each partition's files, named by its rows; no staging and no marker left once the
    // import completed.
    let keys = s3.keys("imports");
    let ours: Vec<&String> = keys.iter().filter(|k| !k.starts_with("local/")).collect();
    assert!(
        ours.iter().all(|k| k.starts_with("docs/backfill/part-")),
        "{ours:?}"
    );
    let partitions: std::collections::BTreeSet<&str> = ours
        .iter()
        .map(|k| &k["docs/backfill/part-".len()..][..32])
        .collect();
    assert_eq!(partitions.len(), 3, "files of every partition: {ours:?}");
    let imports = srv.imports("docs");
    assert_eq!(
        imports.len(),
        2,
        "one import each, local and cluster: {imports:?}"
    );
    let got = srv.records("docs", "backfill");
    let want = srv.records("docs", "local");
    assert_eq!(got.len(), 160);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (id, r) in &got {
        let w = &want[id];
        let close = r
            .values
            .iter()
            .zip(&w.values)
            .all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(
            close,
            "{id}: the cluster's vector differs from the local run's"
        );
        assert_eq!(r.metadata, w.metadata, "{id}");
    }

    // The import was the backfill: the next run upserts only what changed.
    change_small_table(&table);
    let o = run("second.json");
    assert_ok(&o);
    let s = summary(&d.join("second.json"));
    assert_eq!(incremental_counts(&s), [3, 3, 2, 153, 2], "{s}");
    assert_eq!(srv.imports("docs").len(), 2, "no second import");
    let got = srv.records("docs", "backfill");
    assert_eq!(got.len(), 161);
    assert!(got.contains_key("added-2"));
    assert!(
        got.values()
            .any(|r| r.metadata.as_ref().is_some_and(|m| m["chapter"]
                .as_str()
                .is_some_and(|c| c.ends_with("(moved)")))),
        "the metadata-only change reached the index"
    );
}
