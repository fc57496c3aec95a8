//! `src/embed/encoder.rs`

use embedflow::embed::encoder::*;
use embedflow::embed::model::Pooling;

fn lines<'a>(starts: &'a [usize], lengths: &'a [usize], skip: usize) -> Lines<'a> {
    Lines {
        starts,
        lengths,
        skip,
        seq: 3,
        dim: 2,
    }
}

#[test]
fn pooling_ignores_padding() {
    // rows=1, seq=3, dim=2; the last token is padding.
    let hidden = [1.0, 2.0, 3.0, 4.0, 100.0, 100.0];
    let v = pool(&hidden, lines(&[0], &[2], 0), Pooling::Mean);
    assert_eq!(v, vec![2.0, 3.0]);
    let v = pool(&hidden, lines(&[0], &[2], 0), Pooling::Max);
    assert_eq!(v, vec![3.0, 4.0]);
    let v = pool(&hidden, lines(&[0], &[2], 0), Pooling::Cls);
    assert_eq!(v, vec![1.0, 2.0]);
    let v = pool(&hidden, lines(&[0], &[2], 0), Pooling::LastToken);
    assert_eq!(v, vec![3.0, 4.0]);
}

#[test]
fn left_padding_and_a_prompt_left_out() {
    // The first token is padding: the row is tokens 1 and 2.
    let hidden = [100.0, 100.0, 1.0, 2.0, 3.0, 4.0];
    let v = pool(&hidden, lines(&[1], &[2], 0), Pooling::LastToken);
    assert_eq!(v, vec![3.0, 4.0]);
    let v = pool(&hidden, lines(&[1], &[2], 0), Pooling::Mean);
    assert_eq!(v, vec![2.0, 3.0]);
    // The row's first token is a prompt left out of pooling.
    let v = pool(&hidden, lines(&[1], &[2], 1), Pooling::Mean);
    assert_eq!(v, vec![3.0, 4.0]);
}
