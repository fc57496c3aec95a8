//! `src/embed/batch.rs`

use embedflow::embed::batch::*;

#[test]
fn covers_every_row_once_within_budget() {
    let lengths: Vec<usize> = (0..1000).map(|i| (i * 37) % 300 + 2).collect();
    let batches = plan_micro_batches(&lengths, 4096, 64);
    let mut seen = vec![false; lengths.len()];
    for b in &batches {
        let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
        assert!(b.len() <= 64);
        assert!(b.len() * longest <= 4096 || b.len() == 1);
        for &i in b {
            assert!(!seen[i], "row {i} twice");
            seen[i] = true;
        }
    }
    assert!(seen.iter().all(|&s| s));
}

#[test]
fn sorted_batches_waste_little_padding() {
    let lengths: Vec<usize> = (0..512).map(|i| (i * 7919) % 250 + 5).collect();
    let batches = plan_micro_batches(&lengths, 8192, 256);
    let real: usize = lengths.iter().sum();
    let padded: usize = batches
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| lengths[i]).max().unwrap())
        .sum();
    assert!(
        (padded as f64) < real as f64 * 1.15,
        "padded {padded} vs real {real}"
    );
}

#[test]
fn oversized_row_gets_its_own_batch() {
    let batches = plan_micro_batches(&[10, 500, 10], 100, 8);
    assert_eq!(batches, vec![vec![1], vec![0, 2]]);
}

#[test]
fn empty_input() {
    assert!(plan_micro_batches(&[], 100, 8).is_empty());
}
