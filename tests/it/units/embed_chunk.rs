//! `src/embed/chunk/mod.rs`

use embedflow::embed::chunk::*;

#[test]
fn limits() {
    let spec = ChunkingSpec {
        max_tokens: None,
        overlap: 32,
    };
    assert_eq!(spec.max_tokens_for(256).unwrap(), 254);
    let too_big = ChunkingSpec {
        max_tokens: Some(300),
        overlap: 32,
    };
    let e = too_big.max_tokens_for(256).unwrap_err().to_string();
    assert!(e.contains("at most 254"), "{e}");
    let bad = ChunkingSpec {
        max_tokens: Some(16),
        overlap: 16,
    };
    assert!(bad.validate().is_err());
}
