//! `src/embed/bm25/mod.rs`

use embedflow::embed::bm25::*;

#[test]
fn murmur3_as_mmh3_unsigned() {
    // mmh3.hash("", signed=False), mmh3.hash("hello", signed=False)
    assert_eq!(token_index(""), 0);
    assert_eq!(token_index("hello"), 613153351);
}

#[test]
fn a_wrong_form_says_what_is_wrong() {
    let e = serde_yaml_ng::from_str::<SparseSpec>("bm26")
        .unwrap_err()
        .to_string();
    assert!(e.contains("bm26") && e.contains("bm25"), "{e}");
    let e = serde_yaml_ng::from_str::<SparseSpec>("{ method: bm25, k: 1 }")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `k`"), "{e}");
    let json = serde_json::to_string(&SparseSpec {
        params: Some("p.json".into()),
        k1: 1.5,
        b: 0.5,
    })
    .unwrap();
    let back: SparseSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (back.k1, back.b, back.params.as_deref()),
        (1.5, 0.5, Some("p.json"))
    );
}

#[test]
fn the_shorthand_and_the_full_form() {
    let s: SparseSpec = serde_yaml_ng::from_str("bm25").unwrap();
    assert_eq!((s.k1, s.b, s.params.as_deref()), (1.2, 0.75, None));
    let s: SparseSpec =
        serde_yaml_ng::from_str("{ method: bm25, params: p.json, b: 0.5 }").unwrap();
    assert_eq!((s.k1, s.b, s.params.as_deref()), (1.2, 0.5, Some("p.json")));
}
