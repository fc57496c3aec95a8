//! `embed.chunking`: long texts become token-bounded chunks, one row each, with stable ids.

use std::path::Path;

use crate::common::*;
use datafusion::arrow::array::{AsArray, Float32Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int32Type};
use embedflow::embed::{EmbedSpec, Embedder};

/// One output row of a chunked run.
#[derive(Debug, Clone, PartialEq)]
struct Chunk {
    id: String,
    chunk: i32,
    text: String,
    source_id: String,
    n: i64,
    vector: Vec<f32>,
}

fn read_chunks(path: &Path) -> Vec<Chunk> {
    let mut out = Vec::new();
    for batch in read_batches(path) {
        let col = |name: &str| batch.column_by_name(name).unwrap().clone();
        let text_of = |name: &str| cast(&col(name), &DataType::Utf8).unwrap();
        let (ids, texts, sources) = (text_of("id"), text_of("text"), text_of("source_id"));
        let chunks = col("chunk");
        let ns = cast(&col("n"), &DataType::Int64).unwrap();
        let vectors = col("vector");
        let vectors = vectors.as_fixed_size_list();
        for i in 0..batch.num_rows() {
            let v = vectors.value(i);
            out.push(Chunk {
                id: ids.as_string::<i32>().value(i).to_string(),
                chunk: chunks.as_primitive::<Int32Type>().value(i),
                text: texts.as_string::<i32>().value(i).to_string(),
                source_id: sources.as_string::<i32>().value(i).to_string(),
                n: ns
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .value(i),
                vector: v
                    .as_any()
                    .downcast_ref::<Float32Array>()
                    .unwrap()
                    .values()
                    .to_vec(),
            });
        }
    }
    out.sort_by(|a, b| (&a.source_id, a.chunk).cmp(&(&b.source_id, b.chunk)));
    out
}

fn long_text() -> String {
    (0..120)
        .map(|i| {
            format!(
                "Sentence {i} says that the borrow checker keeps reference {i} valid while the owner lives."
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn long_texts_become_bounded_chunks_with_stable_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = long_text();
    write_text_parquet(
        &d.join("docs.parquet"),
        &["short", "long", "none"],
        &[Some("Cargo builds crates."), Some(&long), None],
    );
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml(
            "docs.parquet",
            "out",
            "  chunking: { max_tokens: 64, overlap: 8 }\n",
        ),
    );
    let o = embedflow(d, &["run", "p.yaml", "--summary-json", "s.json"]);
    assert_ok(&o);
    assert!(
        !stderr(&o).contains("longer than max_seq_length"),
        "{}",
        stderr(&o)
    );
    let rows = read_chunks(&d.join("out/part-0.parquet"));
    let long_rows: Vec<&Chunk> = rows.iter().filter(|r| r.source_id == "long").collect();
    assert!(long_rows.len() >= 20, "{} chunks", long_rows.len());
    let short: Vec<&Chunk> = rows.iter().filter(|r| r.source_id == "short").collect();
    assert_eq!(short.len(), 1);
    assert_eq!(short[0].id, "short#0");
    assert_eq!(short[0].text, "Cargo builds crates.");
    assert!(
        rows.iter().all(|r| r.source_id != "none"),
        "a null text has no chunks"
    );

    let embedder = Embedder::load(&EmbedSpec::new("all-MiniLM-L6-v2")).unwrap();
    let mut covered = vec![false; long.len()];
    for (n, r) in long_rows.iter().enumerate() {
        assert_eq!(r.chunk, n as i32);
        assert_eq!(r.id, format!("long#{n}"));
        assert_eq!(r.n, 1, "the source row's other columns ride along");
        // Within the budget, measured with the model's tokenizer ([CLS] and [SEP] aside).
        let tokens = embedder.tokens(&r.text).unwrap().ids.len() - 2;
        assert!(tokens <= 64, "chunk {n}: {tokens} word pieces");
        // A piece of the source, cut at a sentence or word boundary.
        let at = long.find(&r.text).expect("chunk text is in the source");
        covered[at..at + r.text.len()]
            .iter_mut()
            .for_each(|c| *c = true);
        assert!(r.text.ends_with('.') || r.text.ends_with(char::is_alphanumeric));
        // The vector is the chunk's own embedding.
        let want = embedder.embed(&[Some(&r.text)]).unwrap();
        assert!(cosine(&r.vector, &want) > 0.9999, "chunk {n}");
    }
    let uncovered: usize = long
        .char_indices()
        .filter(|(i, c)| !covered[*i] && !c.is_whitespace())
        .count();
    assert_eq!(uncovered, 0, "every word of the text is in some chunk");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s.json")).unwrap()).unwrap();
    assert_eq!(s["rows_truncated"], 0);
    assert_eq!(s["rows_written"], rows.len() as u64);

    // Stable across runs: the same ids and texts.
    assert_ok(&embedflow(d, &["run", "p.yaml"]));
    let again = read_chunks(&d.join("out/part-0.parquet"));
    let key = |v: &[Chunk]| -> Vec<(String, String)> {
        v.iter().map(|r| (r.id.clone(), r.text.clone())).collect()
    };
    assert_eq!(key(&rows), key(&again));

    // query shows the best chunk of each source row, once.
    let o = embedflow(
        d,
        &[
            "query",
            "p.yaml",
            "borrow checker reference valid",
            "-k",
            "5",
            "--format",
            "json",
        ],
    );
    assert_ok(&o);
    let hits: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let sources: Vec<&str> = hits
        .iter()
        .map(|h| h["source_id"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["long", "short"], "{hits:?}");
}

#[test]
fn chunks_must_fit_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_text_parquet(&d.join("docs.parquet"), &["a"], &[Some("text")]);
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  chunking: { max_tokens: 400 }\n"),
    );
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(
        &o,
        2,
        "embed.chunking.max_tokens: 400 does not fit the model",
    );
}

#[test]
fn a_document_prompt_takes_its_tokens_from_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let long = long_text();
    write_text_parquet(&d.join("docs.parquet"), &["long"], &[Some(&long)]);
    let prompt = "Represent this passage of a technical book for retrieval: ";
    // No max_tokens: each chunk gets what max_seq_length leaves after the prompt.
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml(
            "docs.parquet",
            "out",
            &format!("  prompt: \"{prompt}\"\n  chunking: {{ overlap: 8 }}\n"),
        ),
    );
    let o = embedflow(d, &["run", "p.yaml", "--summary-json", "s.json"]);
    assert_ok(&o);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s.json")).unwrap()).unwrap();
    assert_eq!(s["rows_truncated"], 0, "no chunk lost words to the prompt");

    let mut spec = EmbedSpec::new("all-MiniLM-L6-v2");
    spec.prompt = Some(prompt.to_string());
    let embedder = Embedder::load(&spec).unwrap();
    let prompt_tokens = embedder.tokens(prompt).unwrap().ids.len() - 2;
    assert!(prompt_tokens >= 10, "{prompt_tokens}");
    // MiniLM's max_seq_length (256) less [CLS], [SEP] and the prompt.
    let budget = 256 - 2 - prompt_tokens;
    let rows = read_chunks(&d.join("out/part-0.parquet"));
    assert!(rows.len() >= 8, "{} chunks", rows.len());
    let mut largest = 0;
    for r in &rows {
        let tokens = embedder.tokens(&r.text).unwrap().ids.len() - 2;
        assert!(tokens <= budget, "chunk {}: {tokens} > {budget}", r.chunk);
        largest = largest.max(tokens);
        // The vector is the prompted chunk's, untruncated.
        let want = embedder.embed(&[Some(&r.text)]).unwrap();
        assert!(cosine(&r.vector, &want) > 0.9999, "chunk {}", r.chunk);
    }
    // Chunks fill the room the prompt leaves (a sentence is about 20 word pieces).
    assert!(largest + 25 > budget, "largest chunk {largest} of {budget}");

    // max_tokens that fits without the prompt but not with it is refused, naming the key.
    write_file(
        d,
        "p.yaml",
        &pipeline_yaml(
            "docs.parquet",
            "out",
            &format!("  prompt: \"{prompt}\"\n  chunking: {{ max_tokens: 250 }}\n"),
        ),
    );
    let o = embedflow(d, &["run", "p.yaml"]);
    assert_fails_with(
        &o,
        2,
        "embed.chunking.max_tokens: 250 does not fit the model",
    );
    assert!(stderr(&o).contains("prompt"), "{}", stderr(&o));
}
