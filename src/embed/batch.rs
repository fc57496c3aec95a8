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
