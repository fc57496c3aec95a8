"""sentence-transformers on the same GPU and texts as embedflow's CUDA run (benches/gpu/run.sh).

    python compare.py LONG_PARQUET ST_MODEL_DIR EMBEDFLOW_OUTPUT_DIR

Times `SentenceTransformer(DIR, device="cuda").half().encode(texts, batch_size=B,
normalize_embeddings=True)` for B = 32 (the notebook's) and 256, after one warm-up, with the
model loaded (the figure favours sentence-transformers: embedflow's is its whole run), then
compares embedflow's fp16 vectors and sentence-transformers' fp16 vectors with
sentence-transformers' fp32 ones, row by row by id. Prints one JSON line.
"""
import json
import os
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch
from sentence_transformers import SentenceTransformer


def timed(model, texts, batch_size):
    model.encode(texts[:512], batch_size=batch_size)  # warm-up: kernels, allocator
    sync()
    t0 = time.perf_counter()
    v = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    sync()
    return time.perf_counter() - t0, v.astype(np.float32)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = (a * b).sum(1)
    return {"min": float(c.min()), "mean": float(c.mean())}


def main() -> None:
    src, st_dir, out_dir = sys.argv[1:4]
    table = pq.read_table(src, columns=["id", "text"])
    ids = table.column("id").to_pylist()
    texts = table.column("text").to_pylist()
    device = os.environ.get("ST_DEVICE", "cuda")  # cpu: run.sh's dry run
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    res = {"rows": len(texts), "gpu": gpu, "torch": torch.__version__}
    fp16 = SentenceTransformer(st_dir, device=device).half()
    for bs in (32, 256):
        s, v16 = timed(fp16, texts, bs)
        res[f"st_fp16_b{bs}_seconds"] = s
    del fp16
    fp32 = SentenceTransformer(st_dir, device=device)
    s, v32 = timed(fp32, texts, 256)
    res["st_fp32_b256_seconds"] = s
    out = ds.dataset(out_dir, format="parquet").to_table(columns=["id", "vector"])
    by_id = dict(zip(out.column("id").to_pylist(), range(out.num_rows)))
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise SystemExit(f"embedflow's output lacks {len(missing)} ids, e.g. {missing[:3]}")
    vecs = np.asarray(out.column("vector").to_pylist(), dtype=np.float32)
    ef = vecs[[by_id[i] for i in ids]]
    res["embedflow_fp16_vs_st_fp32"] = cosines(ef, v32)
    res["st_fp16_vs_st_fp32"] = cosines(v16, v32)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
