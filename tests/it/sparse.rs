//! BM25 sparse vectors (`embed.sparse: bm25`) and hybrid search: against pinecone-text's
//! `BM25Encoder` (reference in `tests/golden/bm25*.json`, from `scripts/golden-bm25.py`), in a
//! Parquet output searched with `query --alpha`, and upserted to and queried on the project's
//! Pinecone test server, which scores hybrid queries by dot product as Pinecone does.

use std::collections::HashMap;
use std::path::Path;

use crate::common::*;
use embedflow::embed::bm25::tokenizer::{Bm25Tokenizer, TokenizerSettings};
use embedflow::embed::bm25::{Bm25, Bm25Fit, Bm25Params, Sparse};
use embedflow::embed::{EmbedSpec, Embedder};
use pinecone_test_server::{IndexConfig, Metric, PineconeServer, ServerConfig};
use serde_json::Value;

fn golden_dir() -> std::path::PathBuf {
    crate::common::repo_dir().join("tests/golden")
}

fn golden() -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir().join("bm25.json")).unwrap()).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn sparse_of(v: &Value) -> Sparse {
    Sparse {
        indices: v["indices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect(),
        values: v["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    }
}

fn assert_same_sparse(what: &str, got: &Sparse, want: &Sparse) {
    assert_eq!(got.indices, want.indices, "{what}: indices");
    for (g, w) in got.values.iter().zip(&want.values) {
        assert!((g - w).abs() < 1e-6, "{what}: {g} != {w}");
    }
}

fn dot(a: &Sparse, b: &Sparse) -> f64 {
    let m: HashMap<u32, f32> = b
        .indices
        .iter()
        .copied()
        .zip(b.values.iter().copied())
        .collect();
    a.indices
        .iter()
        .zip(&a.values)
        .map(|(i, v)| f64::from(*v) * f64::from(*m.get(i).unwrap_or(&0.0)))
        .sum()
}

#[test]
fn bm25_equals_pinecone_texts_encoder() {
    let g = golden();
    let corpus = strings(&g["corpus"]);
    let queries = strings(&g["queries"]);
    // The tokenizer: NLTK's word rules, stop words and Snowball stemmer.
    let tokenizer = Bm25Tokenizer::new(TokenizerSettings::default());
    for (text, want) in corpus
        .iter()
        .chain(&queries)
        .zip(g["tokens"].as_array().unwrap())
    {
        assert_eq!(tokenizer.tokens(text), strings(want), "tokens of {text:?}");
    }
    // Fitting gives pinecone-text's parameters.
    let file = std::fs::read(golden_dir().join("bm25_params.json")).unwrap();
    let theirs = Bm25Params::parse("pinecone-text's file", &file).unwrap();
    let mut fit = Bm25Fit::new(1.2, 0.75);
    for t in &corpus {
        fit.add(t);
    }
    let ours = fit.finish().unwrap();
    assert_eq!(ours.n_docs, theirs.n_docs);
    assert!((ours.avgdl - theirs.avgdl).abs() < 1e-12);
    let map = |p: &Bm25Params| -> HashMap<u32, f64> {
        p.doc_freq
            .indices
            .iter()
            .copied()
            .zip(p.doc_freq.values.iter().copied())
            .collect()
    };
    assert_eq!(map(&ours), map(&theirs));
    // The file: the same keys as BM25Encoder.dump writes (so BM25Encoder.load reads ours).
    let keys = |v: Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(serde_json::to_value(&ours).unwrap()),
        keys(serde_json::from_slice(&file).unwrap())
    );
    // Documents and queries, from pinecone-text's own parameters file.
    let bm25 = Bm25::new(theirs);
    for (text, want) in corpus.iter().zip(g["documents"].as_array().unwrap()) {
        assert_same_sparse(text, &bm25.encode_document(text), &sparse_of(want));
    }
    for (text, want) in queries.iter().zip(g["query_vectors"].as_array().unwrap()) {
        assert_same_sparse(text, &bm25.encode_query(text), &sparse_of(want));
    }
}

/// A table of the golden corpus (its non-empty texts).
fn corpus_table(d: &Path) -> Vec<(String, String)> {
    let rows: Vec<(String, String)> = strings(&golden()["corpus"])
        .into_iter()
        .filter(|t| !t.is_empty())
        .enumerate()
        .map(|(i, t)| (format!("doc-{i:02}"), t))
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let texts: Vec<Option<&str>> = rows.iter().map(|r| Some(r.1.as_str())).collect();
    write_text_parquet(&d.join("docs.parquet"), &ids, &texts);
    rows
}

fn query_json(d: &Path, args: &[&str]) -> Vec<Value> {
    let o = embedflow_env(d, args, &[("PINECONE_API_KEY", Some(KEY))]);
    assert_ok(&o);
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const KEY: &str = "pc-test-key-sparse";

fn query_vector(text: &str) -> Vec<f32> {
    let e = Embedder::load(&EmbedSpec::new("all-MiniLM-L6-v2")).expect("the default model");
    e.embed_queries(&[Some(text)]).unwrap()
}

#[test]
fn a_parquet_output_holds_sparse_values_and_query_alpha_scores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = corpus_table(d);
    write_file(
        d,
        "p.yaml",
        "source:\n  tables:\n    docs: { path: docs.parquet }\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  sparse: bm25\nsink:\n  parquet: { path: out.parquet }\n",
    );
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_ok(&o);
    assert!(stderr(&o).contains("BM25 fitted on"), "{}", stderr(&o));
    // The parameters beside the output, readable as pinecone-text's.
    let params = Bm25Params::parse(
        "params",
        &std::fs::read(d.join("out.parquet.bm25.json")).unwrap(),
    )
    .unwrap();
    let bm25 = Bm25::new(params);
    let sparse: HashMap<String, Sparse> = read_sparse(&d.join("out.parquet")).into_iter().collect();
    let dense: HashMap<String, Vec<f32>> =
        read_vectors(&d.join("out.parquet")).into_iter().collect();
    assert_eq!(sparse.len(), rows.len());
    for (id, text) in &rows {
        assert_same_sparse(id, &sparse[id], &bm25.encode_document(text));
    }
    // A hybrid query: alpha x cosine + (1 - alpha) x sparse dot, over every row, exactly.
    let q = "whale hunting ships";
    let qd = query_vector(q);
    let qs = bm25.encode_query(q);
    for alpha in [0.0f64, 0.3, 1.0] {
        let a = alpha.to_string();
        let found = query_json(
            d,
            &[
                "query", "p.yaml", q, "-k", "3", "--alpha", &a, "--format", "json",
            ],
        );
        let mut want: Vec<(f64, &String)> = rows
            .iter()
            .map(|(id, _)| {
                (
                    alpha * cosine(&dense[id], &qd) + (1.0 - alpha) * dot(&sparse[id], &qs),
                    id,
                )
            })
            .collect();
        want.sort_by(|x, y| y.0.total_cmp(&x.0));
        assert_eq!(found.len(), 3);
        for (f, w) in found.iter().zip(&want) {
            let score = f["score"].as_f64().unwrap();
            assert!((score - w.0).abs() < 1e-4, "alpha {alpha}: {f} vs {w:?}");
        }
        assert!(found[0].get("sparse_values").is_none(), "{:?}", found[0]);
    }
    // vector_search() in SQL gives query --alpha's ranking and scores.
    let by_query = query_json(
        d,
        &[
            "query", "p.yaml", q, "-k", "3", "--alpha", "0.3", "--format", "json",
        ],
    );
    let sql = format!(
        "SELECT id, score FROM vector_search('sink', embed('{q}'), 3, NULL, bm25_query('{q}'), 0.3)"
    );
    let by_sql = query_json(
        d,
        &["sql", "--pipeline", "p.yaml", "--format", "json", &sql],
    );
    assert_eq!(by_sql.len(), 3);
    for (a, b) in by_query.iter().zip(&by_sql) {
        assert_eq!(a["id"], b["id"]);
        assert!((a["score"].as_f64().unwrap() - b["score"].as_f64().unwrap()).abs() < 1e-4);
    }
    // Sparse only: a whale text first.
    let top = &query_json(
        d,
        &[
            "query", "p.yaml", q, "-k", "1", "--alpha", "0", "--format", "json",
        ],
    )[0];
    assert!(top["text"].as_str().unwrap().contains("whale"), "{top}");
    // Without embed.sparse, --alpha says why it cannot.
    write_file(
        d,
        "plain.yaml",
        "source:\n  tables:\n    docs: { path: docs.parquet }\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\nsink:\n  parquet: { path: plain.parquet }\n",
    );
    assert_fails_with(
        &embedflow(d, &["query", "plain.yaml", q, "--alpha", "0.5"]),
        2,
        "no embed.sparse",
    );
}

#[test]
fn sparse_values_are_upserted_and_hybrid_queries_scored_by_the_pinecone_test_server() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = corpus_table(d);
    let mut hybrid_index = IndexConfig::new("hybrid", 384);
    hybrid_index.metric = Metric::Dotproduct;
    let srv = PineconeServer::start(ServerConfig::new(
        KEY,
        vec![hybrid_index, IndexConfig::new("dense", 384)],
    ))
    .unwrap();
    let yaml = |index: &str| {
        format!(
            "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  sparse: {{ method: bm25, params: bm25.json }}\nsink:\n  pinecone:\n    index: {index}\n    controller: {}\n    metadata: [text]\n",
            srv.controller_url()
        )
    };
    // A cosine index cannot take sparse values: refused before anything is embedded.
    write_file(d, "dense.yaml", &yaml("dense"));
    let o = embedflow_env(
        d,
        &["run", "dense.yaml"],
        &[("PINECONE_API_KEY", Some(KEY))],
    );
    assert_fails_with(&o, 2, "metric dotproduct");
    assert!(srv.records("dense", "").is_empty());

    write_file(d, "p.yaml", &yaml("hybrid"));
    let o = embedflow_env(d, &["run", "p.yaml"], &[("PINECONE_API_KEY", Some(KEY))]);
    assert_ok(&o);
    let bm25 = Bm25::new(
        Bm25Params::parse("params", &std::fs::read(d.join("bm25.json")).unwrap()).unwrap(),
    );
    let records = srv.records("hybrid", "");
    assert_eq!(records.len(), rows.len());
    for (id, text) in &rows {
        let want = bm25.encode_document(text);
        if want.indices.is_empty() {
            // Only stop words: no sparse values sent (Pinecone takes none rather than empty).
            assert!(records[id].sparse.is_none(), "{id}");
            continue;
        }
        let s = records[id].sparse.as_ref().expect("sparse values upserted");
        let got = Sparse {
            indices: s.indices.clone(),
            values: s.values.clone(),
        };
        assert_same_sparse(id, &got, &want);
    }
    // The server scores alpha x dense . q + (1 - alpha) x sparse . q, as Pinecone does.
    let q = "borrow checker data races";
    let qd = query_vector(q);
    let qs = bm25.encode_query(q);
    let found = query_json(
        d,
        &[
            "query", "p.yaml", q, "-k", "2", "--alpha", "0.3", "--format", "json",
        ],
    );
    let mut want: Vec<(f64, &String)> = rows
        .iter()
        .map(|(id, _)| {
            let r = &records[id];
            let dense: f64 = r
                .values
                .iter()
                .zip(&qd)
                .map(|(a, b)| f64::from(a * b))
                .sum();
            let sparse = r
                .sparse
                .as_ref()
                .map(|s| Sparse {
                    indices: s.indices.clone(),
                    values: s.values.clone(),
                })
                .unwrap_or_default();
            (0.3 * dense + 0.7 * dot(&sparse, &qs), id)
        })
        .collect();
    want.sort_by(|x, y| y.0.total_cmp(&x.0));
    assert_eq!(found[0]["id"].as_str().unwrap(), want[0].1.as_str());
    for (f, w) in found.iter().zip(&want) {
        assert!(
            (f["score"].as_f64().unwrap() - w.0).abs() < 1e-4,
            "{f} vs {w:?}"
        );
    }
}

#[test]
fn an_incremental_run_reuses_its_bm25_parameters_and_re_embeds_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rows = corpus_table(d);
    write_file(
        d,
        "p.yaml",
        "source:\n  tables:\n    docs: { path: docs.parquet }\nembed:\n  model: all-MiniLM-L6-v2\n  id: id\n  sparse: bm25\nsink:\n  parquet: { path: out.parquet }\nincremental:\n  state: state\n",
    );
    assert_ok(&embedflow(d, &["run", "p.yaml"]));
    let params = std::fs::read(d.join("out.parquet.bm25.json")).unwrap();
    // One text changes: the parameters are read back, not fitted again on the new table.
    let mut changed = rows.clone();
    changed[0].1 = "Whales and dogs swim together in the cold sea.".to_string();
    let ids: Vec<&str> = changed.iter().map(|r| r.0.as_str()).collect();
    let texts: Vec<Option<&str>> = changed.iter().map(|r| Some(r.1.as_str())).collect();
    write_text_parquet(&d.join("docs.parquet"), &ids, &texts);
    let o = embedflow(d, &["run", "p.yaml", "--summary-json", "s.json"]);
    assert_ok(&o);
    assert!(
        stderr(&o).contains("BM25 parameters read from"),
        "{}",
        stderr(&o)
    );
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s.json")).unwrap()).unwrap();
    assert_eq!(s["rows_embedded"], 1, "{s}");
    assert_eq!(
        std::fs::read(d.join("out.parquet.bm25.json")).unwrap(),
        params
    );
    // Every row's sparse vector is what the one set of parameters gives its text.
    let bm25 = Bm25::new(Bm25Params::parse("params", &params).unwrap());
    let mut seen = 0;
    for (id, got) in read_sparse(&d.join("out.parquet")) {
        let text = &changed.iter().find(|r| r.0 == id).unwrap().1;
        assert_same_sparse(&id, &got, &bm25.encode_document(text));
        seen += 1;
    }
    assert_eq!(seen, changed.len());
}
