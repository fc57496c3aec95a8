//! `src/plan/shard.rs`

use embedflow::plan::shard::*;
use embedflow::shard::Shard;

#[test]
fn parsing_and_a_stable_spread() {
    assert_eq!(
        "1/3".parse::<Shard>().unwrap(),
        Shard { index: 1, count: 3 }
    );
    assert!("3/3".parse::<Shard>().is_err());
    assert!("0/0".parse::<Shard>().is_err());
    assert!("a/3".parse::<Shard>().is_err());
    // Fixed values: the hash must never change between versions or machines.
    // python3 -c 'import hashlib; print([int.from_bytes(hashlib.sha256(f"doc-{i}".encode())
    //     .digest()[:8], "big") % 3 for i in range(6)])'  ->  [1, 1, 2, 0, 0, 0]
    let fixed: Vec<u32> = (0..6).map(|i| shard_of(&format!("doc-{i}"), 3)).collect();
    assert_eq!(fixed, [1, 1, 2, 0, 0, 0]);
    let spread: Vec<u32> = (0..3000)
        .map(|i| shard_of(&format!("doc-{i}"), 3))
        .collect();
    for s in 0..3 {
        let n = spread.iter().filter(|&&x| x == s).count();
        assert!((900..1100).contains(&n), "shard {s} has {n} of 3000");
    }
}
