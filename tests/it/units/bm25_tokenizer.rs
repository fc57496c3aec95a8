//! `src/embed/bm25/tokenizer.rs`

use embedflow::embed::bm25::tokenizer::*;

#[test]
fn nltk_word_tokenize_examples() {
    // NLTKWordTokenizer 3.10's output for the same sentence.
    assert_eq!(
        word_tokenize_sentence(
            "He said, \"Don't go!\" (really) -- it costs $5.50... isn't it? The U.S. can't."
        ),
        [
            "He", "said", ",", "``", "Do", "n't", "go", "!", "''", "(", "really", ")", "--", "it",
            "costs", "$", "5.50", "...", "is", "n't", "it", "?", "The", "U.S.", "ca", "n't", "."
        ]
    );
}

#[test]
fn sentences_end_before_a_capital() {
    assert_eq!(
        word_tokenize("It rained. Then it stopped! ok? no"),
        [
            "It", "rained", ".", "Then", "it", "stopped", "!", "ok", "?", "no"
        ]
    );
    assert_eq!(
        word_tokenize_sentence("'Tis the 'quote' of Ann's"),
        ["'", "Tis", "the", "'", "quote", "'", "of", "Ann", "'s"]
    );
}

#[test]
fn pinecone_texts_pipeline() {
    let t = Bm25Tokenizer::new(TokenizerSettings::default());
    assert_eq!(
        t.tokens("The quick brown foxes are jumping over the lazy dogs."),
        ["quick", "brown", "fox", "jump", "lazi", "dog"]
    );
}
