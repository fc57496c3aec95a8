"""The seed notebook's whole path, for benches/whole_run.rs: sentence-transformers encode, then the
official Pinecone SDK's upsert in batches of 100, the text as metadata.

    python notebook.py TEXTS_JSONL --st-model DIR --controller URL --index-url URL --namespace NS

The API key comes from PINECONE_API_KEY. Model loading and one warm-up encode are not timed (as
in embed_baselines.py); the figure is encode + upsert. Prints one JSON line:
{"rows", "encode_seconds", "upsert_seconds", "seconds", "upserted"}.
"""
import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("texts")
    ap.add_argument("--st-model", required=True)
    ap.add_argument("--controller", required=True)
    ap.add_argument("--index-url", required=True)
    ap.add_argument("--namespace", required=True)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    with open(args.texts) as f:
        texts = [json.loads(line)["text"] for line in f]

    import torch
    from pinecone import Pinecone
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.st_model, device="cpu")
    model.encode(texts[:64], batch_size=32)  # warm-up
    index = Pinecone(api_key=os.environ["PINECONE_API_KEY"], host=args.controller).index(
        host=args.index_url
    )

    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=32, normalize_embeddings=True)
    encoded = time.perf_counter()
    resp = index.upsert(
        vectors=[
            (f"row-{i}", v.tolist(), {"text": t}) for i, (v, t) in enumerate(zip(vectors, texts))
        ],
        batch_size=100,
        namespace=args.namespace,
        show_progress=False,
    )
    done = time.perf_counter()
    print(json.dumps({
        "rows": len(texts),
        "encode_seconds": encoded - start,
        "upsert_seconds": done - encoded,
        "seconds": done - start,
        "upserted": getattr(resp, "upserted_count", None),
    }))


if __name__ == "__main__":
    main()
