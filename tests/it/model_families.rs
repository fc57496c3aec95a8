//! The model families embedflow supports, against sentence-transformers' own vectors: the
//! bundled all-MiniLM-L6-v2 weights with each family's settings (pooling mode, Normalize,
//! prompts in `config_sentence_transformers.json`, a prompt left out of pooling, left padding,
//! a Matryoshka `truncate_dim`). The reference vectors in `tests/golden/model_families.json`
//! come from `scripts/golden-families.py` (sentence-transformers 6.2: `encode`, with a
//! `prompt_name` where the variant names one, and `encode_query`); the model is the offline
//! default the setup installs.

use std::path::{Path, PathBuf};

use crate::common::*;
use embedflow::embed::{EmbedSpec, Embedder, Side};
use serde_json::{Value, json};

fn golden() -> Value {
    let text =
        std::fs::read_to_string(crate::common::repo_dir().join("tests/golden/model_families.json"))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn texts(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// The installed default model's folder (scripts/setup.sh).
fn base_model() -> PathBuf {
    let dir = embedflow::embed::model::model_cache_dir().join("all-MiniLM-L6-v2");
    assert!(
        dir.join("model.onnx").is_file(),
        "{} is missing: run scripts/setup.sh",
        dir.display()
    );
    dir
}

/// The default model's weights with `variant`'s sentence-transformers files.
fn variant_folder(root: &Path, variant: &Value) -> PathBuf {
    let base = base_model();
    let dir = root.join(variant["name"].as_str().unwrap());
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    std::os::unix::fs::symlink(base.join("model.onnx"), dir.join("model.onnx")).unwrap();
    for f in [
        "tokenizer.json",
        "config.json",
        "sentence_bert_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(base.join(f), dir.join(f)).unwrap();
    }
    let mut tokenizer_config: Value =
        serde_json::from_str(&std::fs::read_to_string(base.join("tokenizer_config.json")).unwrap())
            .unwrap();
    tokenizer_config["padding_side"] = variant["padding_side"].clone();
    write_json(&dir.join("tokenizer_config.json"), &tokenizer_config);
    let mut pooling = json!({ "word_embedding_dimension": 384 });
    for (k, v) in variant["pooling"].as_object().unwrap() {
        pooling[k] = v.clone();
    }
    write_json(&dir.join("1_Pooling/config.json"), &pooling);
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if variant["normalize"].as_bool().unwrap() {
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    write_json(&dir.join("modules.json"), &json!(modules));
    write_json(
        &dir.join("config_sentence_transformers.json"),
        &json!({
            "prompts": variant["prompts"],
            "default_prompt_name": variant["default_prompt_name"],
        }),
    );
    dir
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

/// One micro-batch for all texts, as the reference embedded them (with left padding, a text's
/// vector depends on its batch's longest text), with the variant's document prompt name.
fn spec_for(dir: &Path, variant: &Value) -> EmbedSpec {
    let mut spec = EmbedSpec::new(dir.to_str().unwrap());
    spec.prompt_name = variant["prompt_name"].as_str().map(str::to_string);
    spec.batch_rows = 64;
    spec.batch_tokens = Some(1 << 20);
    spec
}

fn embed(e: &Embedder, texts: &[String], side: Side) -> Vec<Vec<f32>> {
    let rows: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let (flat, _) = e.embed_counting_as(&rows, side).unwrap();
    flat.chunks(e.dim()).map(|c| c.to_vec()).collect()
}

fn assert_close(what: &str, got: &[Vec<f32>], want: &[Vec<f32>]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what} #{i}: width");
        let c = cosine(g, w);
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        let diff = g.iter().zip(w).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(
            c >= 0.99999 && diff < 1e-4,
            "{what} #{i}: cosine {c}, largest difference {diff} (relative)"
        );
    }
}

#[test]
fn each_pooling_prompt_and_padding_matches_sentence_transformers() {
    let g = golden();
    let documents = texts(&g["documents"]);
    let queries = texts(&g["queries"]);
    let root = tempfile::tempdir().unwrap();
    for variant in g["variants"].as_array().unwrap() {
        let name = variant["name"].as_str().unwrap();
        let dir = variant_folder(root.path(), variant);
        let e =
            Embedder::load(&spec_for(&dir, variant)).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        assert_close(
            &format!("{name}: documents"),
            &embed(&e, &documents, Side::Document),
            &vectors(&variant["documents"]),
        );
        assert_close(
            &format!("{name}: queries"),
            &embed(&e, &queries, Side::Query),
            &vectors(&variant["queries"]),
        );
    }
}

#[test]
fn matryoshka_dimensions_keep_truncate_dims_direction_at_unit_length() {
    let g = golden();
    let documents = texts(&g["documents"]);
    let variant = g["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v.get("truncate_dim").is_some())
        .unwrap();
    let n = variant["truncate_dim"].as_u64().unwrap() as usize;
    let root = tempfile::tempdir().unwrap();
    let dir = variant_folder(root.path(), variant);
    let mut spec = spec_for(&dir, variant);
    spec.dimensions = Some(n);
    let e = Embedder::load(&spec).unwrap();
    assert_eq!(e.dim(), n);
    let got = embed(&e, &documents, Side::Document);
    // sentence-transformers' truncate_dim cuts without normalising again: the same direction.
    let want: Vec<Vec<f32>> = vectors(&variant["documents_truncated"])
        .into_iter()
        .map(|v| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter().map(|x| x / norm).collect()
        })
        .collect();
    assert_close("truncated documents", &got, &want);
    for v in &got {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    // Wider than the model: a clear error naming the key.
    spec.dimensions = Some(385);
    let err = format!("{:#}", Embedder::load(&spec).unwrap_err());
    assert!(
        err.contains("embed.dimensions") && err.contains("384"),
        "{err}"
    );
}

#[test]
fn a_pipeline_embeds_rows_with_the_document_prompt_and_query_uses_the_query_prompt() {
    let g = golden();
    let documents = texts(&g["documents"]);
    let variant = &g["variants"][0];
    assert_eq!(variant["name"], "mean_passage_query");
    let root = tempfile::tempdir().unwrap();
    let d = root.path();
    let dir = variant_folder(d, variant);
    let ids: Vec<String> = (0..documents.len()).map(|i| format!("doc-{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let text_refs: Vec<Option<&str>> = documents.iter().map(|t| Some(t.as_str())).collect();
    write_text_parquet(&d.join("docs.parquet"), &id_refs, &text_refs);
    let yaml = |extra: &str| {
        format!(
            "source:\n  tables:\n    docs: {{ path: docs.parquet }}\nembed:\n  model: {}\n  id: id\n{extra}sink:\n  parquet: {{ path: out.parquet }}\nincremental:\n  state: state\n",
            dir.display()
        )
    };
    write_file(d, "p.yaml", &yaml("  prompt_name: passage\n"));
    assert_ok(&embedflow(
        d,
        &["run", "p.yaml", "--summary-json", "s1.json"],
    ));
    let got: std::collections::BTreeMap<String, Vec<f32>> =
        read_vectors(&d.join("out.parquet")).into_iter().collect();
    let want = vectors(&variant["documents"]);
    for (i, id) in ids.iter().enumerate() {
        let c = cosine(&got[id], &want[i]);
        assert!(c >= 0.99999, "{id}: cosine {c} to encode_document's vector");
    }
    // The query prompt: the top score is encode_query's vector against encode_document's.
    let o = embedflow(
        d,
        &[
            "query",
            "p.yaml",
            "what is the capital of France?",
            "-k",
            "1",
            "--format",
            "json",
        ],
    );
    assert_ok(&o);
    let top: Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(top["id"], "doc-3", "{top}");
    let expected = cosine(&vectors(&variant["queries"])[0], &want[3]);
    let score = top["score"].as_f64().unwrap();
    assert!(
        (score - expected).abs() < 1e-4,
        "score {score}, sentence-transformers {expected}"
    );
    // Another prompt shapes every vector: an incremental run embeds every row again.
    write_file(d, "p.yaml", &yaml("  prompt: \"document: \"\n"));
    let o = embedflow(d, &["run", "p.yaml", "--summary-json", "s2.json"]);
    assert_ok(&o);
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("s2.json")).unwrap()).unwrap();
    assert_eq!(s["rows_embedded"], documents.len(), "{s}");
    assert!(stderr(&o).contains("prompt"), "{}", stderr(&o));
    // A prompt name the model does not have: one line naming the key and the prompts it has.
    write_file(d, "p.yaml", &yaml("  prompt_name: doc\n"));
    assert_fails_with(
        &embedflow(d, &["run", "p.yaml"]),
        2,
        "embed.prompt_name: `doc` is not one of model",
    );
}
