//! `src/sink/parquet/staging.rs`

use embedflow::sink::parquet::staging::*;

#[test]
fn removes_only_staging_files_of_the_output() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "part-0.parquet#1",
        "part-0.parquet#12",
        ".embedflow-write-checkAb12",
        "part-0.parquet",
        "part-0.parquet#x",
        "part-1.parquet#1",
        "notes#1",
    ] {
        std::fs::write(dir.path().join(f), b"x").unwrap();
    }
    assert_eq!(remove_stale(dir.path(), "part-0.parquet"), 3);
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "notes#1",
            "part-0.parquet",
            "part-0.parquet#x",
            "part-1.parquet#1"
        ]
    );
}
