//! The command line end to end with the offline default model: runs, queries, SQL, and a clear
//! one-line error with a non-zero exit for every kind of bad input.

use std::path::Path;

use crate::common::*;
use embedflow::embed::{EmbedSpec, Embedder};

const TEXTS: &[&str] = &[
    "How do I handle errors in Rust?",
    "The borrow checker enforces ownership rules at compile time.",
    "Cargo is Rust's build system and package manager.",
    "A vector is a growable array type.",
    "Use the ? operator to propagate errors to the caller.",
    "Threads can share data through channels or mutexes.",
    "",
    "Traits define shared behaviour, a bit like interfaces in other languages, and generic functions can require them as bounds so the compiler checks every call.",
];

fn sample(dir: &Path) {
    let ids: Vec<String> = (0..TEXTS.len()).map(|i| format!("doc-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let texts: Vec<Option<&str>> = TEXTS.iter().map(|t| Some(*t)).collect();
    write_text_parquet(&dir.join("docs.parquet"), &ids, &texts);
}

fn write(dir: &Path, name: &str, text: &str) {
    write_file(dir, name, text);
}

#[test]
fn run_writes_vectors_equal_to_direct_embedding_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    // A small token budget forces several micro-batches, so order restoring is exercised.
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  batch_tokens: 64\n"),
    );
    let o = embedflow(
        dir.path(),
        &["run", "p.yaml", "--summary-json", "summary.json"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rows read 8, embedded 8, skipped 0"),
        "{}",
        stdout(&o)
    );
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["rows_written"], 8);
    assert!(summary["tokens"].as_u64().unwrap() > 50);

    let rows = read_vectors(&dir.path().join("out/part-0.parquet"));
    assert_eq!(rows.len(), TEXTS.len());
    let embedder = Embedder::load(&EmbedSpec::new("all-MiniLM-L6-v2")).unwrap();
    for (id, v) in rows {
        let i: usize = id.strip_prefix("doc-").unwrap().parse().unwrap();
        let alone = embedder.embed(&[Some(TEXTS[i])]).unwrap();
        let c = cosine(&v, &alone);
        assert!(
            c > 0.99999,
            "{id}: cosine {c} to its own text embedded alone"
        );
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{id}: norm {norm}");
    }
}

#[test]
fn query_finds_the_closest_text() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    assert!(embedflow(dir.path(), &["run", "p.yaml"]).status.success());
    let o = embedflow(
        dir.path(),
        &[
            "query",
            "p.yaml",
            "propagating errors with the question mark",
            "-k",
            "2",
            "--format",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "doc-4", "{lines:?}");
    assert!(lines[0]["score"].as_f64().unwrap() > lines[1]["score"].as_f64().unwrap());
    assert_eq!(lines[0]["text"], TEXTS[4]);
}

#[test]
fn sql_has_embed_and_cosine_similarity() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let o = embedflow(
        dir.path(),
        &[
            "sql",
            "--table",
            "docs=docs.parquet",
            "--format",
            "json",
            "SELECT id, cosine_similarity(embed(text), embed('package manager')) AS s, arrow_typeof(embed(text)) AS t FROM docs ORDER BY s DESC LIMIT 1",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let row: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().unwrap()).unwrap();
    assert_eq!(row["id"], "doc-2");
    assert!(
        row["t"].as_str().unwrap().contains("FixedSizeList"),
        "{row}"
    );
    assert!(row["t"].as_str().unwrap().contains("384"), "{row}");
}

#[test]
fn validate_prints_schema_and_explain_prints_plan_without_output() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    let o = embedflow(dir.path(), &["validate", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("vector: FixedSizeList") && out.contains("384"),
        "{out}"
    );
    assert!(
        out.contains("  text: Utf8") && out.contains("  n: Int64"),
        "{out}"
    );
    // The cost, before anything is embedded for real.
    assert!(
        out.contains(&format!(
            "estimate (from {n} sampled texts): {n} rows",
            n = TEXTS.len()
        )) && out.contains("tokens/s (measured here"),
        "{out}"
    );
    let o = embedflow(dir.path(), &["explain", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("embed(docs.text)"), "{}", stdout(&o));
    // The whole job, sink included, is one plan.
    assert!(
        stdout(&o).contains("Dml: op=[Insert Into] table=[sink]"),
        "{}",
        stdout(&o)
    );
    let o = embedflow(dir.path(), &["explain", "p.yaml", "--physical"]);
    assert!(
        stdout(&o).contains("DataSinkExec") && stdout(&o).contains("EmbedflowSink: parquet out"),
        "{}",
        stdout(&o)
    );
    assert!(!dir.path().join("out/part-0.parquet").exists());
}

#[test]
fn null_text_is_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    write_text_parquet(
        &dir.path().join("docs.parquet"),
        &["a", "b", "c"],
        &[Some("first"), None, Some("third")],
    );
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    let o = embedflow(dir.path(), &["run", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("rows read 3, embedded 2, skipped 1 (null text), written 2"),
        "{}",
        stdout(&o)
    );
    let ids: Vec<String> = read_vectors(&dir.path().join("out/part-0.parquet"))
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&"b".to_string()));
}

#[test]
fn truncated_texts_are_counted_and_said_once() {
    let dir = tempfile::tempdir().unwrap();
    let long = "ownership and borrowing ".repeat(200);
    let longer = "lifetimes ".repeat(400);
    write_text_parquet(
        &dir.path().join("docs.parquet"),
        &["short", "long", "longer"],
        &[Some("a short text"), Some(&long), Some(&longer)],
    );
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    let o = embedflow(dir.path(), &["run", "p.yaml", "--summary-json", "s.json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let said: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("longer than max_seq_length"))
        .collect();
    assert_eq!(said.len(), 1, "{}", stderr(&o));
    assert!(
        said[0].contains("2 of 3 texts") && said[0].contains("256 word pieces"),
        "{}",
        said[0]
    );
    assert!(said[0].contains("up to 512"), "{}", said[0]);
    assert!(said[0].contains("embed.chunking"), "{}", said[0]);
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("s.json")).unwrap()).unwrap();
    assert_eq!(s["rows_truncated"], 2);
}

#[test]
fn empty_table_writes_valid_empty_output() {
    let dir = tempfile::tempdir().unwrap();
    write_text_parquet(&dir.path().join("docs.parquet"), &[], &[]);
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    let o = embedflow(dir.path(), &["run", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("rows read 0"), "{}", stdout(&o));
    assert!(read_vectors(&dir.path().join("out/part-0.parquet")).is_empty());
}

#[test]
fn failed_run_leaves_previous_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "good.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    assert!(
        embedflow(dir.path(), &["run", "good.yaml"])
            .status
            .success()
    );
    let before = std::fs::read(dir.path().join("out/part-0.parquet")).unwrap();
    // Fails while streaming: division by zero at row n = 5.
    let bad = pipeline_yaml("docs.parquet", "out", "").replace(
        "    docs: { path: docs.parquet }\n",
        "    docs: { path: docs.parquet }\n  sql: SELECT id, text, 10 / (n - 5) AS x FROM docs\n",
    );
    write(dir.path(), "bad.yaml", &bad);
    let o = embedflow(dir.path(), &["run", "bad.yaml"]);
    assert_fails_with(&o, 1, "Divide by zero");
    assert_eq!(
        std::fs::read(dir.path().join("out/part-0.parquet")).unwrap(),
        before
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "{leftovers:?}");
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("nope.parquet", "out", ""),
    );
    assert_fails_with(
        &embedflow(dir.path(), &["run", "p.yaml"]),
        1,
        "table `docs`: file not found: nope.parquet",
    );
}

#[test]
fn corrupt_parquet() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "docs.parquet",
        "this is not parquet at all, just text",
    );
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    assert_fails_with(
        &embedflow(dir.path(), &["run", "p.yaml"]),
        1,
        "table `docs` (docs.parquet)",
    );
}

#[test]
fn missing_column_lists_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let y = pipeline_yaml("docs.parquet", "out", "").replace("text: text", "text: body");
    write(dir.path(), "p.yaml", &y);
    let o = embedflow(dir.path(), &["run", "p.yaml"]);
    assert!(
        stderr(&o).contains("text (") && stderr(&o).contains("n (Int64)"),
        "{}",
        stderr(&o)
    );
    assert_fails_with(
        &o,
        1,
        "embed.text: column `body` not found; available columns: id (",
    );
}

#[test]
fn non_string_text_column() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "").replace("text: text", "text: n"),
    );
    assert_fails_with(
        &embedflow(dir.path(), &["validate", "p.yaml"]),
        1,
        "column `n` is Int64, not text",
    );
}

#[test]
fn invalid_yaml() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "p.yaml",
        "source:\n  tables: [unclosed\nembed: {\n",
    );
    assert_fails_with(&embedflow(dir.path(), &["run", "p.yaml"]), 2, "line");
}

#[test]
fn unknown_key_names_line_and_suggests() {
    let dir = tempfile::tempdir().unwrap();
    let y = pipeline_yaml("docs.parquet", "out", "  batch_tokenz: 100\n");
    write(dir.path(), "p.yaml", &y);
    let o = embedflow(dir.path(), &["validate", "p.yaml"]);
    assert_fails_with(&o, 2, "unknown field `batch_tokenz`");
    assert!(
        stderr(&o).contains("line 8") && stderr(&o).contains("did you mean `batch_tokens`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn bad_set_override() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    assert_fails_with(
        &embedflow(
            dir.path(),
            &["run", "p.yaml", "--set", "embed.batch_tokens"],
        ),
        2,
        "expected KEY=VALUE",
    );
    assert_fails_with(
        &embedflow(
            dir.path(),
            &["run", "p.yaml", "--set", "embed.batch_tokens=many"],
        ),
        2,
        "--set",
    );
}

#[test]
fn missing_env_var() {
    let dir = tempfile::tempdir().unwrap();
    let y = pipeline_yaml("docs.parquet", "out", "")
        .replace("all-MiniLM-L6-v2", "${EMBEDFLOW_TEST_NO_SUCH_VAR}");
    write(dir.path(), "p.yaml", &y);
    assert_fails_with(
        &embedflow(dir.path(), &["run", "p.yaml"]),
        2,
        "EMBEDFLOW_TEST_NO_SUCH_VAR is not set",
    );
}

#[test]
fn unknown_model_says_how_to_install() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "").replace("all-MiniLM-L6-v2", "no-such-model"),
    );
    assert_fails_with(
        &embedflow(dir.path(), &["run", "p.yaml"]),
        1,
        "scripts/setup.sh",
    );
}

#[test]
fn unreadable_model() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let model = dir.path().join("broken-model");
    std::fs::create_dir(&model).unwrap();
    std::fs::write(model.join("model.onnx"), b"\x00\x01 not an onnx graph").unwrap();
    let cached = embedflow::embed::model::resolve("all-MiniLM-L6-v2").unwrap();
    std::fs::copy(cached.tokenizer, model.join("tokenizer.json")).unwrap();
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "").replace("all-MiniLM-L6-v2", "broken-model"),
    );
    assert_fails_with(
        &embedflow(dir.path(), &["run", "p.yaml"]),
        1,
        "model broken-model: cannot load",
    );
}

#[test]
fn missing_onnx_runtime_library() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml(
            "docs.parquet",
            "out",
            "  onnxruntime: /nonexistent/libonnxruntime.so\n",
        ),
    );
    let o = embedflow(dir.path(), &["run", "p.yaml"]);
    assert_fails_with(
        &o,
        1,
        "ONNX Runtime library not found at /nonexistent/libonnxruntime.so",
    );
    assert!(
        stderr(&o).contains("pip install onnxruntime"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn int8_run_stays_close_to_fp32() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  precision: int8\n"),
    );
    let o = embedflow(dir.path(), &["run", "p.yaml"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = read_vectors(&dir.path().join("out/part-0.parquet"));
    assert_eq!(rows.len(), TEXTS.len());
    let fp32 = Embedder::load(&EmbedSpec::new("all-MiniLM-L6-v2")).unwrap();
    let texts: Vec<Option<&str>> = TEXTS.iter().map(|t| Some(*t)).collect();
    let want = fp32.embed(&texts).unwrap();
    let dim = fp32.dim();
    let mut min = f64::MAX;
    for (id, v) in &rows {
        let i: usize = id.trim_start_matches("doc-").parse().unwrap();
        min = min.min(cosine(v, &want[i * dim..(i + 1) * dim]));
    }
    assert!(min >= 0.99, "int8 vs fp32 minimum cosine {min}");
    assert!(
        min < 0.99999,
        "int8 equals fp32 ({min}): was the model quantised?"
    );
}

/// A copy of the installed default model in `dir/model`, a folder a pipeline names by path.
fn model_folder(dir: &Path) -> std::path::PathBuf {
    let model = dir.join("model");
    let installed = embedflow::embed::model::resolve("all-MiniLM-L6-v2").unwrap();
    std::fs::create_dir(&model).unwrap();
    for f in [
        "tokenizer.json",
        "config.json",
        "modules.json",
        "sentence_bert_config.json",
        "model.onnx",
    ] {
        std::fs::copy(installed.dir.join(f), model.join(f)).unwrap();
    }
    model
}

/// Changes an ONNX file's bytes, not its graph: appends a doc_string (ModelProto field 6; the
/// last one wins).
fn other_bytes(onnx: &Path) {
    let mut bytes = std::fs::read(onnx).unwrap();
    bytes.extend_from_slice(&[0x32, 0x01, b'x']);
    std::fs::write(onnx, bytes).unwrap();
}

#[test]
fn int8_without_the_python_tools_says_how_to_get_them() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    // A model folder of its own, so no int8 model is cached for it yet.
    let model = model_folder(dir.path());
    // Other bytes, another cache key.
    other_bytes(&model.join("model.onnx"));
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  precision: int8\n").replace(
            "model: all-MiniLM-L6-v2",
            &format!("model: {}", model.display()),
        ),
    );
    // A cache of its own (the library found as usual), to see what a failure leaves in it.
    let home = dir.path().join("home");
    let library = embedflow::embed::runtime::find_library(None).unwrap();
    let o = embedflow_env(
        dir.path(),
        &["run", "p.yaml"],
        &[
            ("EMBEDFLOW_PYTHON", Some("/nonexistent/python3")),
            ("EMBEDFLOW_HOME", home.to_str()),
            ("ORT_DYLIB_PATH", library.to_str()),
        ],
    );
    assert_fails_with(
        &o,
        1,
        "embed.precision int8: cannot run Python (/nonexistent/python3)",
    );
    assert!(stderr(&o).contains("scripts/setup.sh"), "{}", stderr(&o));
    assert!(!dir.path().join("out").exists(), "output written");
    // Nothing is left in the prepared-model cache.
    let left: Vec<_> = std::fs::read_dir(home.join("prepared"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "left in the cache: {left:?}");
}

#[test]
fn cuda_device_without_cuda_runtime_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  device: cuda:0\n"),
    );
    // The CPU library from the PyPI `onnxruntime` wheel (what scripts/setup.sh installs), named
    // explicitly so the test means the same on a machine with a GPU build: no CUDA provider,
    // and never a fall back to the CPU.
    let cpu_library = embedflow::embed::runtime::embedflow_home().join("lib/libonnxruntime.so");
    let o = embedflow_env(
        dir.path(),
        &["run", "p.yaml"],
        &[("ORT_DYLIB_PATH", Some(cpu_library.to_str().unwrap()))],
    );
    assert_fails_with(&o, 1, "embed.device cuda:0");
    assert!(
        stderr(&o).contains("CUDA execution provider"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("onnxruntime-gpu"), "{}", stderr(&o));
    assert!(!dir.path().join("out").exists(), "output written");
}

#[test]
fn fp16_on_cpu_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  precision: fp16\n"),
    );
    let o = embedflow(dir.path(), &["validate", "p.yaml"]);
    assert_fails_with(&o, 2, "embed.precision: fp16 runs on GPUs only");
}

#[test]
fn output_path_not_writable() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(dir.path(), "blocker", "a file where a folder should be");
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "blocker/out", ""),
    );
    let o = embedflow(dir.path(), &["run", "p.yaml"]);
    assert_fails_with(&o, 1, "is not writable");
    assert!(!stdout(&o).contains("rows read"), "failed before embedding");
}

#[test]
fn json_logs_are_one_object_per_line_with_the_summary_and_the_error() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    let o = embedflow(
        dir.path(),
        &[
            "--log-format",
            "json",
            "-v",
            "run",
            "p.yaml",
            "--no-progress",
        ],
    );
    assert_ok(&o);
    let lines: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["timestamp"].is_string() && l["level"].is_string())
    );
    let summary = lines
        .iter()
        .find(|l| l["message"] == "summary")
        .expect("a summary line");
    assert_eq!(summary["rows_written"], TEXTS.len() as u64, "{summary}");
    assert!(summary["tokens"].as_u64().unwrap() > 0, "{summary}");

    let o = embedflow(dir.path(), &["--log-format", "json", "run", "missing.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let last: serde_json::Value = serde_json::from_str(stderr(&o).lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["exit_code"], 2);
    assert!(
        last["message"].as_str().unwrap().contains("missing.yaml"),
        "{last}"
    );
}

#[test]
fn vector_search_searches_the_sink_from_sql() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    assert_ok(&embedflow(dir.path(), &["run", "p.yaml", "--no-progress"]));
    let search = |sql: &str| {
        let o = embedflow(
            dir.path(),
            &["sql", "--pipeline", "p.yaml", "--format", "json", sql],
        );
        assert_ok(&o);
        stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let rows = search(
        "SELECT id, score, metadata FROM vector_search('sink', embed('How do I handle errors in Rust?'), 3)",
    );
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0]["id"], "doc-0", "{rows:?}");
    assert!(rows[0]["score"].as_f64().unwrap() > 0.999, "{rows:?}");
    let metadata: serde_json::Value =
        serde_json::from_str(rows[0]["metadata"].as_str().unwrap()).unwrap();
    assert_eq!(metadata["text"], TEXTS[0], "{metadata}");
    // A SQL filter over the output's columns applies before the top k.
    let rows = search(
        "SELECT id FROM vector_search('sink', embed('How do I handle errors in Rust?'), 2, 'n >= 3')",
    );
    assert!(
        rows.iter().all(|r| r["id"] != "doc-0") && rows.len() == 2,
        "{rows:?}"
    );
    let o = embedflow(
        dir.path(),
        &[
            "sql",
            "--pipeline",
            "p.yaml",
            "SELECT * FROM vector_search('docs', embed('x'), 2)",
        ],
    );
    assert_fails_with(&o, 1, "not a sink table");
}

#[test]
fn insert_into_sink_writes_what_run_writes() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", ""),
    );
    assert_ok(&embedflow(dir.path(), &["run", "p.yaml", "--no-progress"]));
    let by_run: std::collections::BTreeMap<String, Vec<f32>> =
        read_vectors(&dir.path().join("out/part-0.parquet"))
            .into_iter()
            .collect();
    std::fs::remove_dir_all(dir.path().join("out")).unwrap();

    let o = embedflow(
        dir.path(),
        &[
            "sql",
            "--pipeline",
            "p.yaml",
            "--allow-writes",
            "INSERT INTO sink SELECT id, embed(text) AS vector, text, n FROM docs",
        ],
    );
    assert_ok(&o);
    assert!(
        stdout(&o).contains(&format!("written {} to out/part-0.parquet", TEXTS.len())),
        "{}",
        stdout(&o)
    );
    let by_insert = read_vectors(&dir.path().join("out/part-0.parquet"));
    assert_eq!(by_insert.len(), by_run.len());
    for (id, v) in &by_insert {
        let worst = v
            .iter()
            .zip(&by_run[id])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "{id}: {worst}");
    }
    // The sink checks what is inserted: a text is not a vector.
    let o = embedflow(
        dir.path(),
        &[
            "sql",
            "--pipeline",
            "p.yaml",
            "--allow-writes",
            "INSERT INTO sink (id, vector) SELECT id, text FROM docs",
        ],
    );
    assert_fails_with(&o, 1, "FixedSizeList(384");
    // An INSERT keeps run's rules: it writes only with --allow-writes, and its ids are checked
    // before anything is embedded; the output stays as it was.
    let before = std::fs::read(dir.path().join("out/part-0.parquet")).unwrap();
    let sql = |query: &str, allow: bool| {
        let mut args = vec!["sql", "--pipeline", "p.yaml"];
        if allow {
            args.push("--allow-writes");
        }
        args.push(query);
        embedflow(dir.path(), &args)
    };
    let o = sql(
        "INSERT INTO sink SELECT id, embed(text) AS vector, text, n FROM docs",
        false,
    );
    assert_fails_with(&o, 2, "only reads unless --allow-writes is given");
    let o = sql(
        "INSERT INTO sink SELECT 'same' AS id, embed(text) AS vector, text, n FROM docs",
        true,
    );
    assert_fails_with(&o, 1, "appear on more than one row");
    let o = sql(
        "INSERT INTO sink SELECT CASE WHEN n = 2 THEN NULL ELSE id END AS id, embed(text) AS vector, text, n FROM docs",
        true,
    );
    assert_fails_with(&o, 1, "null or empty id");
    assert!(stderr(&o).contains("`id`"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dir.path().join("out/part-0.parquet")).unwrap(),
        before,
        "the output is as it was"
    );
    // Other tables stay read-only.
    let o = embedflow(
        dir.path(),
        &[
            "sql",
            "--pipeline",
            "p.yaml",
            "INSERT INTO docs SELECT * FROM docs",
        ],
    );
    assert_fails_with(&o, 2, "may only read");
}

#[test]
fn omp_wait_policy_passive_makes_onnx_runtime_threads_sleep_between_operators() {
    let dir = tempfile::tempdir().unwrap();
    write_text_parquet(
        &dir.path().join("docs.parquet"),
        &["a"],
        &[Some("a short text")],
    );
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "  threads: 2\n"),
    );
    for (policy, said) in [
        (None, "2 intra-op threads, spinning between operators"),
        (
            Some("active"),
            "2 intra-op threads, spinning between operators",
        ),
        (
            Some("PASSIVE"),
            "2 intra-op threads, sleeping (OMP_WAIT_POLICY=PASSIVE)",
        ),
        (
            Some("passive"),
            "2 intra-op threads, sleeping (OMP_WAIT_POLICY=PASSIVE)",
        ),
    ] {
        std::fs::remove_dir_all(dir.path().join("out")).ok();
        let o = embedflow_env(
            dir.path(),
            &["run", "p.yaml", "--no-progress", "-vv"],
            &[("OMP_WAIT_POLICY", policy)],
        );
        assert_ok(&o);
        assert!(stderr(&o).contains(said), "{policy:?}: {}", stderr(&o));
    }
}

/// Sessions load a copy of the graph with its weights in a file beside it (mapped, not read
/// and copied), cached under the home once per model file; a home where nothing can be
/// cached loads the file as it is, with the same vectors bit for bit.
#[test]
fn the_weights_are_mapped_from_a_cached_copy_and_a_home_without_room_gives_the_same_vectors() {
    let dir = tempfile::tempdir().unwrap();
    sample(dir.path());
    let model = model_folder(dir.path());
    write(
        dir.path(),
        "p.yaml",
        &pipeline_yaml("docs.parquet", "out", "").replace(
            "model: all-MiniLM-L6-v2",
            &format!("model: {}", model.display()),
        ),
    );
    let library = embedflow::embed::runtime::find_library(None).unwrap();
    let run = |home: &Path, out: &str| {
        let o = embedflow_env(
            dir.path(),
            &[
                "run",
                "p.yaml",
                "--no-progress",
                "--set",
                &format!("sink.parquet.path={out}"),
            ],
            &[
                ("EMBEDFLOW_HOME", home.to_str()),
                ("ORT_DYLIB_PATH", library.to_str()),
            ],
        );
        assert_ok(&o);
        read_vectors(&dir.path().join(out).join("part-0.parquet"))
    };
    let copies = |home: &Path| -> Vec<std::path::PathBuf> {
        let mut found: Vec<_> = std::fs::read_dir(home.join("prepared"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        found.sort();
        found
    };
    let home = dir.path().join("home");
    let mapped = run(&home, "a");
    let made = copies(&home);
    assert_eq!(made.len(), 1, "{made:?}");
    assert!(
        made[0].to_str().unwrap().ends_with("-weights-v1"),
        "{made:?}"
    );
    let graph = std::fs::metadata(made[0].join("model.onnx")).unwrap().len();
    let weights = std::fs::metadata(made[0].join("model.onnx.data"))
        .unwrap()
        .len();
    let whole = std::fs::metadata(model.join("model.onnx")).unwrap().len();
    assert!(
        graph < 1 << 20 && weights > whole * 9 / 10,
        "{graph} + {weights} of {whole}"
    );
    // Used, not made again.
    assert_eq!(run(&home, "b"), mapped);
    assert_eq!(copies(&home), made);
    // A home that cannot be created (its parent is a file): the model file as it is.
    std::fs::write(dir.path().join("not-a-folder"), "").unwrap();
    let unmapped = run(&dir.path().join("not-a-folder/home"), "c");
    assert!(!mapped.is_empty());
    assert_eq!(unmapped.len(), mapped.len());
    for ((id, a), (id2, b)) in mapped.iter().zip(&unmapped) {
        assert_eq!(id, id2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(a), bits(b), "{id}");
    }
    // Another model file, another copy.
    other_bytes(&model.join("model.onnx"));
    run(&home, "d");
    assert_eq!(copies(&home).len(), 2);
}
