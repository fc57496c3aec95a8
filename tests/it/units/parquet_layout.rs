//! `src/sink/parquet/layout.rs`

use embedflow::sink::parquet::layout::*;

#[test]
fn layouts_round_trip_through_their_tags() {
    for l in [Layout::Whole, Layout::Cluster, Layout::Sharded { count: 3 }] {
        assert_eq!(Layout::parse(&l.tag()), Some(l));
    }
    assert_eq!(Layout::parse("shards/x"), None);
}
