//! `src/incremental/tracker.rs`

use embedflow::incremental::state::StateRow;
use embedflow::incremental::tracker::*;

fn row(id: &str, chunks: i32) -> StateRow {
    StateRow {
        id: id.into(),
        text_fp: "t".into(),
        meta_fp: "m".into(),
        chunks,
        deleted: false,
    }
}

#[test]
fn stale_vectors() {
    assert!(stale_ids("a", None, 3).is_empty());
    assert_eq!(stale_ids("a", Some(0), 2), vec!["a"]);
    assert_eq!(stale_ids("a", Some(4), 2), vec!["a#2", "a#3"]);
    assert_eq!(stale_ids("a", Some(2), 0), vec!["a#0", "a#1"]);
    assert!(stale_ids("a", Some(2), 3).is_empty());
}

#[test]
fn a_row_is_ready_when_all_its_vectors_landed_and_stale_ones_are_gone() {
    let mut t = Tracker::default();
    t.sent(HiddenRows {
        rows: vec![
            (row("a", 2), Some(3)),
            (row("a", 2), Some(3)),
            (row("b", 0), None),
        ],
    });
    t.confirmed(["a#0".to_string(), "b".to_string()]);
    assert_eq!(t.take_ready(), vec![row("b", 0)]);
    t.confirmed(["a#1".to_string()]);
    assert!(t.take_ready().is_empty());
    assert_eq!(t.take_stale(), vec!["a#2"]);
    t.stale_deleted();
    assert_eq!(t.take_ready(), vec![row("a", 2)]);
    assert_eq!(t.unconfirmed(), 0);
}
