//! Micro-batching: sort rows by token count, pack them under a token budget and a row cap.
//!
//! Each micro-batch is padded only to its longest row, so the cost of a batch is
//! `rows x longest`; sorting by length keeps that close to the real token count.

/// Groups row indices into micro-batches.
///
/// `lengths[i]` is row i's token count. Rows are taken longest first (a memory peak shows up in
/// the first batch, not the last), and a batch grows while `rows x longest <= batch_tokens` and
/// `rows <= batch_rows`. A row longer than the budget gets a batch of its own.
pub fn plan_micro_batches(
    lengths: &[usize],
    batch_tokens: usize,
    batch_rows: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0usize;
    for i in order {
        let len = lengths[i].max(1);
        let new_longest = longest.max(len);
        let fits = (current.len() + 1) * new_longest <= batch_tokens && current.len() < batch_rows;
        if !current.is_empty() && !fits {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
