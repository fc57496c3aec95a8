//! Staging files: while the output is written, object_store's local file system keeps it as
//! `<file>#<n>` beside its final name and renames it only when complete. A run killed with
//! `kill -9` cannot remove its own; the next run in that folder does, before it writes.

use std::path::Path;

/// Removes `<file name>#<digits>` staging files (and embedflow's write-check files) left in
/// `dir` for the output `file_name`; returns how many were removed. Only embedflow's own names
/// are touched.
pub fn remove_stale(dir: &Path, file_name: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_ours(name, file_name) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                removed += 1;
                tracing::info!(
                    "removed {}, left by an earlier run that was killed",
                    entry.path().display()
                );
            }
            Err(e) => tracing::warn!(
                "cannot remove {}, left by an earlier run: {e}",
                entry.path().display()
            ),
        }
    }
    removed
}

fn is_ours(name: &str, file_name: &str) -> bool {
    if name.starts_with(".embedflow-write-check") {
        return true;
    }
    name.strip_prefix(file_name)
        .and_then(|rest| rest.strip_prefix('#'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
