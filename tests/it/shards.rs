//! `run --shard I/N`: N runs, each over the rows whose id hashes to its shard, together write
//! what one full run writes, each row exactly once (Parquet parts and a Pinecone index).

use std::collections::BTreeMap;
use std::path::Path;

use crate::common::*;
use pinecone_test_server::{IndexConfig, PineconeServer, ServerConfig};

const KEY: &str = "pc-test-key-shards";
const N: usize = 300;

fn corpus(dir: &Path) {
    let ids: Vec<String> = (0..N).map(|i| format!("doc-{i}")).collect();
    let texts: Vec<String> = (0..N)
        .map(|i| {
            format!(
                "row {i} tells of a harbor, a violin and the number {}",
                i * 7
            )
        })
        .collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let texts: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    write_text_parquet(&dir.join("docs.parquet"), &ids, &texts);
}

/// The corpus in `dir`, and the vectors of one run over all of it.
fn full_run(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    corpus(dir);
    write_file(dir, "full.yaml", &pipeline_yaml("docs.parquet", "full", ""));
    assert_ok(&embedflow(dir, &["run", "full.yaml", "--no-progress"]));
    read_vectors(&dir.join("full/part-0.parquet"))
        .into_iter()
        .collect()
}

#[test]
fn three_parquet_shards_write_one_part_each_and_together_the_full_output() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full = full_run(d);

    write_file(d, "s.yaml", &pipeline_yaml("docs.parquet", "sharded", ""));
    let mut got = BTreeMap::new();
    let mut sizes = Vec::new();
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = embedflow(
            d,
            &[
                "run",
                "s.yaml",
                "--no-progress",
                "--shard",
                &shard,
                "--summary-json",
                "s.json",
            ],
        );
        assert_ok(&o);
        let s: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("s.json")).unwrap()).unwrap();
        assert_eq!(s["shard"], shard.as_str(), "{s}");
        let part = read_vectors(&d.join(format!("sharded/part-{i}.parquet")));
        sizes.push(part.len());
        for (id, v) in part {
            assert!(got.insert(id.clone(), v).is_none(), "{id} in two shards");
        }
    }
    assert!(
        sizes.iter().all(|&n| n > N / 6),
        "an even spread: {sizes:?}"
    );
    assert_same_vectors(&full, &got, 1e-5);

    // `query` reads every part of the folder.
    let o = embedflow(
        d,
        &[
            "query",
            "s.yaml",
            "a harbor and a violin",
            "-k",
            "300",
            "--format",
            "json",
        ],
    );
    assert_ok(&o);
    assert_eq!(
        stdout(&o).lines().filter(|l| l.contains("\"id\"")).count(),
        N,
        "{}",
        stdout(&o)
    );

    // A shard out of range is a usage error; a file output cannot take parts.
    let o = embedflow(d, &["run", "s.yaml", "--shard", "3/3"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    write_file(
        d,
        "file.yaml",
        &pipeline_yaml("docs.parquet", "one.parquet", ""),
    );
    let o = embedflow(d, &["run", "file.yaml", "--no-progress", "--shard", "0/3"]);
    assert_fails_with(&o, 2, "one part per shard");
}

#[test]
fn three_pinecone_shards_fill_the_index_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let full = full_run(d);

    let srv =
        PineconeServer::start(ServerConfig::new(KEY, vec![IndexConfig::new("docs", 384)])).unwrap();
    let yaml = format!(
        "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  pinecone:\n    index: docs\n    controller: {}\n",
        srv.controller_url()
    );
    write_file(d, "pc.yaml", &yaml);
    for i in 0..3 {
        let shard = format!("{i}/3");
        let o = embedflow_env(
            d,
            &["run", "pc.yaml", "--no-progress", "--shard", &shard],
            &[("PINECONE_API_KEY", Some(KEY))],
        );
        assert_ok(&o);
    }
    assert_eq!(srv.vectors_upserted("docs"), N as u64, "each row sent once");
    let got: BTreeMap<String, Vec<f32>> = srv
        .records("docs", "")
        .into_iter()
        .map(|(id, r)| (id, r.values))
        .collect();
    assert_same_vectors(&full, &got, 1e-5);
}

#[test]
fn an_output_folder_holds_one_layout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(d);
    write_file(d, "s.yaml", &pipeline_yaml("docs.parquet", "out", ""));
    let parts = |d: &Path| parquet_names(&d.join("out"));
    for i in 0..2 {
        let shard = format!("{i}/2");
        assert_ok(&embedflow(
            d,
            &["run", "s.yaml", "--no-progress", "--shard", &shard],
        ));
    }
    assert_eq!(parts(d), ["part-0.parquet", "part-1.parquet"]);
    // A whole run replaces the sharded layout whole, and says so.
    let o = embedflow(d, &["run", "s.yaml", "--no-progress"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("replaces the folder's parts of a run split into 2 shards")
            && stderr(&o).contains("removed part-1.parquet"),
        "{}",
        stderr(&o)
    );
    assert_eq!(parts(d), ["part-0.parquet"]);
    let ids: std::collections::BTreeSet<String> = read_vectors(&d.join("out/part-0.parquet"))
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), N, "every row once");
    // A shard beside a whole run's output is refused, naming the file; nothing changes.
    let before = std::fs::read(d.join("out/part-0.parquet")).unwrap();
    let o = embedflow(d, &["run", "s.yaml", "--no-progress", "--shard", "1/2"]);
    assert_fails_with(
        &o,
        2,
        "holds part-0.parquet, written by a run without --shard",
    );
    assert_eq!(parts(d), ["part-0.parquet"]);
    assert_eq!(std::fs::read(d.join("out/part-0.parquet")).unwrap(), before);
}
