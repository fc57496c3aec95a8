//! `src/plan/memory.rs`

use datafusion::error::DataFusionError;
use embedflow::plan::memory::*;

#[test]
fn a_given_limit_is_kept_and_the_default_is_half_the_memory() {
    let given = MemoryLimit::new(Some("2GB".parse().unwrap()));
    assert_eq!(given.bytes, 2_000_000_000);
    assert!(given.to_string().contains("--memory-limit"));
    let default = MemoryLimit::new(None);
    assert!(!default.given);
    assert!(default.bytes > 0 && default.bytes <= usable_memory() / 2);
}

#[test]
fn exhaustion_is_found_by_type_however_wrapped() {
    let inner = DataFusionError::ResourcesExhausted("no room".into());
    let wrapped = DataFusionError::Context("sorting".into(), Box::new(inner));
    let err = anyhow::Error::new(wrapped).context("phase embed");
    assert!(exhausted(&err));
    assert!(explain(err).to_string().contains("--memory-limit"));
    let other = anyhow::Error::new(DataFusionError::Plan("bad".into()));
    assert!(!exhausted(&other));
}
