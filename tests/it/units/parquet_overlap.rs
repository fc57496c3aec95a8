//! `src/sink/parquet/overlap.rs`

use embedflow::error::ConfigError;
use embedflow::plan::source::SourceSpec;
use embedflow::plan::source::TableSpec;
use embedflow::sink::parquet::config::ParquetSinkSpec;
use embedflow::sink::parquet::overlap::*;

fn check(output: &str, source: &str) -> Result<(), ConfigError> {
    let spec = ParquetSinkSpec {
        path: output.to_string(),
        row_group_rows: 8192,
        format: Default::default(),
        mode: None,
    };
    let mut tables = std::collections::BTreeMap::new();
    tables.insert(
        "docs".to_string(),
        TableSpec {
            path: source.to_string(),
            format: None,
            version: None,
        },
    );
    refuse_output_over_sources(&spec, &SourceSpec { tables, sql: None })
}

#[test]
fn remote_prefixes() {
    assert!(check("s3://lake/in/a.parquet", "s3://lake/in/a.parquet").is_err());
    assert!(check("s3://lake/in", "s3://lake/in/a.parquet").is_err());
    assert!(check("s3://lake/in/out", "s3://lake/in/").is_err());
    assert!(check("s3://lake/in/out", "s3://lake/in/**/*.parquet").is_err());
    assert!(check("s3://lake/", "s3://lake/in/a.parquet").is_err());
    assert!(check("s3://lake/out", "s3://lake/in/").is_ok());
    assert!(check("s3://lake/index", "s3://lake/in").is_ok());
    assert!(check("s3://other/in", "s3://lake/in/").is_ok());
    assert!(check("s3://lake/in/b.parquet", "s3://lake/in/a.parquet").is_ok());
}

#[test]
fn local_spellings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in/sub")).unwrap();
    std::fs::write(d.join("in/a.parquet"), b"x").unwrap();
    std::os::unix::fs::symlink(d.join("in"), d.join("link")).unwrap();
    let p = |s: &str| d.join(s).display().to_string();
    assert!(check(&p("in/a.parquet"), &p("in/a.parquet")).is_err());
    assert!(check(&p("in/sub/../a.parquet"), &p("./in/a.parquet")).is_err());
    assert!(check(&p("link/a.parquet"), &p("in/a.parquet")).is_err());
    assert!(check(&p("in"), &p("in/a.parquet")).is_err());
    assert!(check(&p("in/sub"), &p("in")).is_err());
    assert!(check(&p("in/new"), &p("in/*.parquet")).is_ok());
    assert!(check(&p("in"), &p("in/*.parquet")).is_err());
    assert!(check(&p("out"), &p("in/a.parquet")).is_ok());
    assert!(check(&p("in/b.parquet"), &p("in/a.parquet")).is_ok());
    let e = check(&p("link"), &p("in/a.parquet"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("sink.parquet.path") && e.contains("table `docs`"),
        "{e}"
    );
}
