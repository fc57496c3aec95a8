"""The Python tools embedflow replaces, timed on the same texts (benches/throughput.rs runs this).

    python embed_baselines.py TOOL TEXTS_JSONL --st-model DIR --onnx FILE --threads N

TOOL is one of:
  st   sentence-transformers `SentenceTransformer(DIR).encode(texts, batch_size=32,
       normalize_embeddings=True)` on torch's CPU kernels, N threads.
  ort  the "raw ONNX Runtime" loop of ../shared/BASELINES.md: tokenise with `tokenizers`
       (truncation at 256), sort by length, batches of 64 padded to their longest row,
       ORT_ENABLE_ALL, N intra-op threads, masked mean pooling and L2 normalisation in numpy.
Prints one JSON line: {"tool", "rows", "seconds", "best_of"}; model loading and one warm-up pass
are not timed; the figure is the best of --reps passes.
"""
import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool", choices=["st", "ort"])
    ap.add_argument("texts")
    ap.add_argument("--st-model", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    with open(args.texts) as f:
        texts = [json.loads(line)["text"] for line in f]
    encode = st_encoder(args) if args.tool == "st" else ort_encoder(args)
    encode(texts[:64])  # warm-up
    best = float("inf")
    for _ in range(args.reps):
        t0 = time.perf_counter()
        vectors = encode(texts)
        best = min(best, time.perf_counter() - t0)
        assert len(vectors) == len(texts)
    print(json.dumps({"tool": args.tool, "rows": len(texts), "seconds": best, "best_of": args.reps}))


def st_encoder(args):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(args.st_model, device="cpu")
    return lambda texts: model.encode(texts, batch_size=32, normalize_embeddings=True)


def ort_encoder(args):
    import os

    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(args.st_model, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def encode(texts):
        encs = tok.encode_batch(texts)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        out = [None] * len(texts)
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            width = max(len(encs[i].ids) for i in batch)
            ids = np.zeros((len(batch), width), np.int64)
            mask = np.zeros((len(batch), width), np.int64)
            for r, i in enumerate(batch):
                n = len(encs[i].ids)
                ids[r, :n] = encs[i].ids
                mask[r, :n] = encs[i].attention_mask
            feed = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(ids)
            hidden = session.run(None, feed)[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            for r, i in enumerate(batch):
                out[i] = pooled[r]
        return out

    return encode


if __name__ == "__main__":
    main()
