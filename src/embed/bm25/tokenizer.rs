//! pinecone-text's `BM25Tokenizer`, in Rust: NLTK's `word_tokenize` (its Treebank-style
//! `NLTKWordTokenizer` rules, ported regex for regex from NLTK 3.10), lower case, punctuation
//! tokens dropped, NLTK's English stop words dropped, Snowball's English stemmer.
//!
//! Where it differs from pinecone-text: NLTK first splits a text into sentences with its
//! trained Punkt model (fetched at run time, which these machines cannot do); here a sentence
//! ends at `.`, `!` or `?` followed by white space and an upper-case letter, a digit or a quote.
//! The two differ on abbreviations before a capital (`Dr. Smith`: NLTK keeps `dr.`, here `dr`
//! and `.`, and the `.` is dropped as punctuation) and on sentences that start in lower case.
//! Only `language: english` is supported.

use std::collections::HashSet;
use std::sync::OnceLock;

use regex::Regex;
use rust_stemmers::{Algorithm, Stemmer};

/// NLTK's English stop words (nltk_data `corpora/stopwords/english`, 198 words).
const ENGLISH_STOP_WORDS: &str = "i me my myself we our ours ourselves you you're you've you'll \
you'd your yours yourself yourselves he him his himself she she's her hers herself it it's its \
itself they them their theirs themselves what which who whom this that that'll these those am is \
are was were be been being have has had having do does did doing a an the and but if or because \
as until while of at by for with about against between into through during before after above \
below to from up down in out on off over under again further then once here there when where why \
how all any both each few more most other some such no nor not only own same so than too very s t \
can will just don don't should should've now d ll m o re ve y ain aren aren't couldn couldn't \
didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn mightn't \
mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't \
wouldn wouldn't he'd he'll he's i'd i'll i'm i've it'd it'll she'd she'll they'd they'll they're \
they've we'd we'll we're we've";

/// Python's `string.punctuation`.
const PUNCTUATION: &str = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";

/// The settings of pinecone-text's tokenizer (its parameters file holds them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenizerSettings {
    pub lower_case: bool,
    pub remove_punctuation: bool,
    pub remove_stopwords: bool,
    pub stem: bool,
}

impl Default for TokenizerSettings {
    fn default() -> Self {
        TokenizerSettings {
            lower_case: true,
            remove_punctuation: true,
            remove_stopwords: true,
            stem: true,
        }
    }
}

struct Rules {
    starting_quotes: Vec<(Regex, &'static str)>,
    punctuation: Vec<(Regex, &'static str)>,
    parens: Regex,
    double_dashes: Regex,
    ending_quotes: Vec<(Regex, &'static str)>,
    contractions: Vec<Regex>,
    stop_words: HashSet<&'static str>,
}

fn re(pattern: &str) -> Regex {
    Regex::new(pattern).expect("a tokenizer rule")
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| Rules {
        starting_quotes: vec![
            (re("([«“‘„]|[`]+)"), " ${1} "),
            (re(r#"^""#), "``"),
            (re("(``)"), " ${1} "),
            (re(r#"([ \(\[{<])("|'{2})"#), "${1} `` "),
        ],
        punctuation: vec![
            (re(r#"([^\.])(\.)([\]\)}>"'»”’ ]*)\s*$"#), "${1} ${2} ${3} "),
            (re(r"([:,])([^\d])"), " ${1} ${2}"),
            (re(r"([:,])$"), " ${1} "),
            (re(r"\.{2,}"), " ${0} "),
            (re(r"[;@#$%&]"), " ${0} "),
            (re(r"[\x{2012}-\x{2015}]"), " ${0} "),
            (re(r#"([^\.])(\.)([\]\)}>"']*)\s*$"#), "${1} ${2}${3} "),
            (re(r"[?!]"), " ${0} "),
            (re(r"([^'])' "), "${1} ' "),
            (re(r"[*]"), " ${0} "),
        ],
        parens: re(r"[\]\[(){}<>]"),
        double_dashes: re("--"),
        ending_quotes: vec![
            (re("([»”’])"), " ${1} "),
            (re("''"), " '' "),
            (re(r#"""#), " '' "),
            (re(r"\s+"), " "),
            (re(r"([^' ])('[sS]|'[mM]|'[dD]|') "), "${1} ${2} "),
            (
                re(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "),
                "${1} ${2} ",
            ),
        ],
        contractions: [
            r"(?i)\b(can)(not)\b",
            r"(?i)\b(d)('ye)\b",
            r"(?i)\b(gim)(me)\b",
            r"(?i)\b(gon)(na)\b",
            r"(?i)\b(got)(ta)\b",
            r"(?i)\b(lem)(me)\b",
            r"(?i)\b(more)('n)\b",
            // NLTK's `(?=\s)`: the white space is matched and put back.
            r"(?i)\b(wan)(na)(\s)",
            r"(?i) ('t)(is)\b",
            r"(?i) ('t)(was)\b",
        ]
        .iter()
        .map(|p| re(p))
        .collect(),
        stop_words: ENGLISH_STOP_WORDS.split_whitespace().collect(),
    })
}

fn replace(text: String, rule: &Regex, with: &str) -> String {
    match rule.replace_all(&text, with) {
        std::borrow::Cow::Borrowed(_) => text,
        std::borrow::Cow::Owned(s) => s,
    }
}

/// NLTK's `NLTKWordTokenizer().tokenize(sentence)`.
pub fn word_tokenize_sentence(sentence: &str) -> Vec<String> {
    let r = rules();
    let mut text = sentence.to_string();
    for (rule, with) in &r.starting_quotes {
        text = replace(text, rule, with);
    }
    text = split_opening_quote(&text);
    for (rule, with) in &r.punctuation {
        text = replace(text, rule, with);
    }
    text = replace(text, &r.parens, " ${0} ");
    text = replace(text, &r.double_dashes, " -- ");
    text = format!(" {text} ");
    for (rule, with) in &r.ending_quotes {
        text = replace(text, rule, with);
    }
    for rule in &r.contractions {
        text = replace(text, rule, " ${1} ${2} ${3}");
    }
    text.split_whitespace().map(str::to_string).collect()
}

/// NLTK's `(?i)(?<!\w)(')(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)` -> `' `: an opening single quote
/// before a word (not a clitic such as `'s` or `'re`) is split from it.
fn split_opening_quote(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let word = |c: Option<&char>| c.is_some_and(|c| c.is_alphanumeric() || *c == '_');
    let mut out = String::with_capacity(text.len() + 8);
    for (i, &c) in chars.iter().enumerate() {
        out.push(c);
        if c != '\'' || (i > 0 && word(chars.get(i - 1))) || !word(chars.get(i + 1)) {
            continue;
        }
        let clitic = ["re", "ve", "ll", "m", "t", "s", "d", "n"].iter().any(|k| {
            let n = k.chars().count();
            let next: String = chars[i + 1..].iter().take(n).collect();
            next.eq_ignore_ascii_case(k) && !word(chars.get(i + 1 + n))
        });
        if !clitic {
            out.push(' ');
        }
    }
    out
}

/// Where sentences end: after `.`, `!` or `?` and white space, before an upper-case letter, a
/// digit, a quote or an opening bracket (see the module's note).
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (_, c) = chars[i];
        if matches!(c, '.' | '!' | '?') {
            let mut j = i + 1;
            while j < chars.len() && chars[j].1.is_whitespace() {
                j += 1;
            }
            if j > i + 1
                && j < chars.len()
                && (chars[j].1.is_uppercase()
                    || chars[j].1.is_ascii_digit()
                    || "\"'“‘([".contains(chars[j].1))
            {
                out.push(&text[start..chars[i + 1].0]);
                start = chars[j].0;
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out.push(&text[start..]);
    out
}

/// `word_tokenize(text)`: sentences (see the module's note), then each sentence's words.
pub fn word_tokenize(text: &str) -> Vec<String> {
    sentences(text)
        .into_iter()
        .flat_map(word_tokenize_sentence)
        .collect()
}

/// pinecone-text's `BM25Tokenizer(...)(text)`.
pub struct Bm25Tokenizer {
    settings: TokenizerSettings,
    stemmer: Stemmer,
}

impl Bm25Tokenizer {
    pub fn new(settings: TokenizerSettings) -> Bm25Tokenizer {
        Bm25Tokenizer {
            settings,
            stemmer: Stemmer::create(Algorithm::English),
        }
    }

    pub fn tokens(&self, text: &str) -> Vec<String> {
        let s = self.settings;
        let stop = &rules().stop_words;
        word_tokenize(text)
            .into_iter()
            .map(|t| if s.lower_case { t.to_lowercase() } else { t })
            .filter(|t| {
                !(s.remove_punctuation && t.chars().count() == 1 && PUNCTUATION.contains(t))
            })
            .filter(|t| !(s.remove_stopwords && stop.contains(t.to_lowercase().as_str())))
            .map(|t| {
                if s.stem {
                    self.stemmer.stem(&t).into_owned()
                } else {
                    t
                }
            })
            .collect()
    }
}
