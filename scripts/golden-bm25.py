"""Reference BM25 sparse vectors for tests/it/sparse.rs, computed by pinecone-text's BM25Encoder.

pinecone-text's tokenizer fetches NLTK data at run time (Punkt, stop words), which the project's
machines cannot; so the encoder here gets NLTK's own word tokenizer (NLTKWordTokenizer, which
needs no data) on single-sentence texts, lower case, string.punctuation dropped, the stop words
embedflow uses (NLTK's English list, below) and NLTK's SnowballStemmer("english"): everything
pinecone-text's BM25Tokenizer does but the sentence split. The hashing, fitting, weights and the
parameters file are pinecone-text's own code.

Run with pinecone-text 0.11.0, nltk 3.10.4, mmh3:
    python scripts/golden-bm25.py tests/golden
"""

import json
import os
import string
import sys

from nltk.stem import SnowballStemmer
from nltk.tokenize import NLTKWordTokenizer
from pinecone_text.sparse import BM25Encoder

STOP_WORDS = set("""i me my myself we our ours ourselves you you're you've you'll you'd your yours
yourself yourselves he him his himself she she's her hers herself it it's its itself they them their
theirs themselves what which who whom this that that'll these those am is are was were be been being
have has had having do does did doing a an the and but if or because as until while of at by for
with about against between into through during before after above below to from up down in out on
off over under again further then once here there when where why how all any both each few more
most other some such no nor not only own same so than too very s t can will just don don't should
should've now d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't
hasn hasn't haven haven't isn isn't ma mightn mightn't mustn mustn't needn needn't shan shan't
shouldn shouldn't wasn wasn't weren weren't won won't wouldn wouldn't he'd he'll he's i'd i'll i'm
i've it'd it'll she'd she'll they'd they'll they're they've we'd we'll we're we've""".split())

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A lazy dog sleeps all day in the sun.",
    "Whales are the largest animals that have ever lived on Earth.",
    "The captain's ship sailed past the whales at dawn!",
    "Rust's borrow checker doesn't allow data races.",
    "Can't we all just get along?",
    "Prices rose 3.5% in 2024, said the U.S. report (preliminary).",
    "She said, \"I'm going to the market -- don't wait.\"",
    "Running runners ran; the runs were run by running.",
    "Hybrid search mixes dense and sparse vectors: names, codes and rare terms.",
    "BM25 weights terms by frequency and rarity.",
    "e-mail addresses like someone@example.com and #hashtags & symbols...",
    "Whalers hunted whales; the whale oil lit lamps.",
    "",
    "the and of",
]
QUERIES = [
    "lazy dogs",
    "whale hunting ships",
    "borrow checker data races",
    "a word nobody used before",
    "the",
]


class Tokenizer:
    lower_case = True
    remove_punctuation = True
    remove_stopwords = True
    stem = True
    language = "english"

    def __init__(self):
        self.words = NLTKWordTokenizer()
        self.stemmer = SnowballStemmer("english")
        self.punctuation = set(string.punctuation)

    def __call__(self, text):
        tokens = [t.lower() for t in self.words.tokenize(text)]
        tokens = [t for t in tokens if t not in self.punctuation]
        tokens = [t for t in tokens if t not in STOP_WORDS]
        return [self.stemmer.stem(t) for t in tokens]


def main(out):
    encoder = BM25Encoder.__new__(BM25Encoder)
    encoder.b = 0.75
    encoder.k1 = 1.2
    encoder._tokenizer = Tokenizer()
    encoder.doc_freq = None
    encoder.n_docs = None
    encoder.avgdl = None
    encoder.fit(CORPUS)
    encoder.dump(os.path.join(out, "bm25_params.json"))
    result = {
        "corpus": CORPUS,
        "queries": QUERIES,
        "tokens": [encoder._tokenizer(t) for t in CORPUS + QUERIES],
        "documents": encoder.encode_documents(CORPUS),
        "query_vectors": [
            {"indices": [int(i) for i in v["indices"]], "values": [float(x) for x in v["values"]]}
            for v in encoder.encode_queries(QUERIES)
        ],
    }
    with open(os.path.join(out, "bm25.json"), "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
