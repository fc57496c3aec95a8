//! `src/config/mod.rs`

use embedflow::config::*;
use embedflow::embed::EmbedSpec;
use embedflow::embed::{Device, Precision};

const BASE: &str = "source:\n  tables:\n    docs: { path: data/sample.parquet }\nembed:\n  model: m\nsink:\n  parquet: { path: out/x }\n";

#[test]
fn parses_defaults() {
    let p = Pipeline::parse(BASE, &[]).unwrap();
    let defaults = EmbedSpec::new("m");
    assert_eq!(p.embed.text, defaults.text);
    assert_eq!(p.embed.batch_rows, defaults.batch_rows);
    assert_eq!(p.embed.batch_tokens, None);
    assert_eq!(p.embed.batch_tokens(), 768);
    assert_eq!(p.embed.precision, Precision::Fp32);
    assert_eq!(p.embed.device, Device::Cpu);
    assert!(p.embed.id.is_none());
}

#[test]
fn parses_device_and_precision() {
    let with = |extra: &str| {
        Pipeline::parse(
            &BASE.replace("  model: m\n", &format!("  model: m\n{extra}")),
            &[],
        )
    };
    let p = with("  device: cuda\n  precision: fp16\n").unwrap();
    assert_eq!(p.embed.device, Device::Cuda(vec![0]));
    assert_eq!(p.embed.batch_tokens(), 16384);
    let p = with("  device: cuda:0,1\n").unwrap();
    assert_eq!(p.embed.device, Device::Cuda(vec![0, 1]));
    assert_eq!(p.embed.device.to_string(), "cuda:0,1");
    let p = with("  precision: int8\n").unwrap();
    assert_eq!(p.embed.precision, Precision::Int8);
    let e = with("  device: gpu\n").unwrap_err().to_string();
    assert!(e.contains("invalid device `gpu`"), "{e}");
    let e = with("  device: cuda:1,1\n").unwrap_err().to_string();
    assert!(e.contains("listed twice"), "{e}");
    let e = with("  precision: fp16\n").unwrap_err().to_string();
    assert!(e.contains("GPUs only"), "{e}");
    let e = with("  precision: int4\n").unwrap_err().to_string();
    assert!(e.contains("int4"), "{e}");
}

#[test]
fn unknown_key_names_line_and_suggestion() {
    let y = BASE.replace("  model: m\n", "  model: m\n  batch_tokenz: 5\n");
    let e = Pipeline::parse(&y, &[]).unwrap_err().to_string();
    assert!(e.contains("batch_tokenz"), "{e}");
    assert!(e.contains("line 6"), "{e}");
    assert!(e.contains("did you mean `batch_tokens`"), "{e}");
}

#[test]
fn set_overrides_and_types() {
    let p = Pipeline::parse(BASE, &["embed.batch_tokens=4096".into()]).unwrap();
    assert_eq!(p.embed.batch_tokens, Some(4096));
    let e = Pipeline::parse(BASE, &["embed.batch_tokens".into()]).unwrap_err();
    assert!(e.to_string().contains("expected KEY=VALUE"), "{e}");
    let e = Pipeline::parse(BASE, &["embed.batch_tokens=lots".into()]).unwrap_err();
    assert!(
        e.to_string().contains("--set embed.batch_tokens=lots"),
        "{e}"
    );
    let e = Pipeline::parse(BASE, &["embed.modle=x".into()]).unwrap_err();
    assert!(e.to_string().contains("did you mean `model`"), "{e}");
    let e = Pipeline::parse(BASE, &["embed.batch_rows=0".into()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("embed.batch_rows: must be at least 1")
            && e.to_string().contains("--set"),
        "{e}"
    );
}

// One test owns these variables: tests run on several threads, and the environment is
// process-wide.
#[test]
fn env_substitution_stays_a_value() {
    // SAFETY: no other test reads or writes these variables.
    unsafe {
        std::env::set_var("EMBEDFLOW_TEST_MODEL", "from-env");
        std::env::set_var("EMBEDFLOW_TEST_OUT", "/x, row_group_rows: 7");
        std::env::set_var("EMBEDFLOW_TEST_MULTILINE", "a\nsql: DROP TABLE x\n");
        std::env::set_var("EMBEDFLOW_TEST_ROWS", "4096");
        std::env::set_var("EMBEDFLOW_TEST_BAD_ROWS", "lots");
        std::env::set_var("EMBEDFLOW_TEST_NUMERIC_NS", "12345");
    }
    let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_MODEL}");
    assert_eq!(Pipeline::parse(&y, &[]).unwrap().embed.model, "from-env");
    let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_UNSET_VAR:-fallback}");
    assert_eq!(Pipeline::parse(&y, &[]).unwrap().embed.model, "fallback");
    let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_UNSET_VAR}");
    let e = Pipeline::parse(&y, &[]).unwrap_err().to_string();
    assert!(
        e.contains("EMBEDFLOW_TEST_UNSET_VAR") && e.contains("line 5"),
        "{e}"
    );

    // A value with `: ` and `,` stays the path; it cannot set row_group_rows.
    let y = BASE.replace("path: out/x", "path: ${EMBEDFLOW_TEST_OUT}");
    let p = Pipeline::parse(&y, &[]).unwrap();
    let parquet = p.sink.parquet().unwrap();
    assert_eq!(parquet.path, "/x, row_group_rows: 7");
    assert_eq!(parquet.row_group_rows, 8192);
    // A newline cannot add a key either.
    let y = BASE.replace("model: m", "model: ${EMBEDFLOW_TEST_MULTILINE}");
    let p = Pipeline::parse(&y, &[]).unwrap();
    assert_eq!(p.embed.model, "a\nsql: DROP TABLE x\n");
    assert!(p.source.sql.is_none());
    // A whole-value variable still fills a number...
    let y = BASE.replace(
        "  model: m\n",
        "  model: m\n  batch_rows: ${EMBEDFLOW_TEST_ROWS}\n",
    );
    assert_eq!(Pipeline::parse(&y, &[]).unwrap().embed.batch_rows, 4096);
    // ...and a number-like value stays text where text is expected.
    let y = BASE.replace(
        "  parquet: { path: out/x }\n",
        "  pinecone: { index: docs, namespace: \"${EMBEDFLOW_TEST_NUMERIC_NS}\" }\n",
    );
    let p = Pipeline::parse(&y, &[]).unwrap();
    assert_eq!(p.sink.pinecone.unwrap().namespace.as_deref(), Some("12345"));
    // An error caused by a variable's value names the variable.
    let y = BASE.replace(
        "  model: m\n",
        "  model: m\n  batch_rows: ${EMBEDFLOW_TEST_BAD_ROWS}\n",
    );
    let e = Pipeline::parse(&y, &[]).unwrap_err().to_string();
    assert!(
        e.contains("embed.batch_rows") && e.contains("${EMBEDFLOW_TEST_BAD_ROWS}"),
        "{e}"
    );
    assert_eq!(substitute_text("a $${X} b").unwrap(), "a ${X} b");
    // Keys are never substituted.
    let y = BASE.replace("  model: m\n", "  model: m\n  ${EMBEDFLOW_TEST_MODEL}: 1\n");
    let e = Pipeline::parse(&y, &[]).unwrap_err().to_string();
    assert!(e.contains("unknown field `${EMBEDFLOW_TEST_MODEL}`"), "{e}");
}
