"""Per-operator profile of an ONNX model run the way embedflow runs it, for finding where time goes.

    python profile_ops.py MODEL.onnx TOKENIZER.json PARQUET [--start N] [--rows N]
                          [--batch-tokens 768] [--threads N]

Tokenises the `text` column of rows start..start+rows (truncation at 256), sorts them by length
into micro-batches of at most --batch-tokens (rows x longest row) and 256 rows, as embedflow does,
runs them once as a warm-up and again under ONNX Runtime's profiler (only the second pass
counts), and prints per operator type: kernel seconds, share, and for matrix products the rate in
GFLOP/s (2*M*K*N from the shapes the profiler records; int8 products counted the same way, as
operations).
"""
import argparse
import collections
import json
import os

MATMULS = {"MatMul", "FusedMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
           "MatMulInteger", "Gemm", "MatMulNBits"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokenizer")
    ap.add_argument("parquet")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--rows", type=int, default=300)
    ap.add_argument("--batch-tokens", type=int, default=768)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    import numpy as np
    import onnxruntime as ort
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    texts = pq.read_table(args.parquet, columns=["text"]).column("text").to_pylist()
    texts = [t or "" for t in texts[args.start: args.start + args.rows]]
    tok = Tokenizer.from_file(args.tokenizer)
    tok.no_padding()
    tok.enable_truncation(256)
    ids = [e.ids for e in tok.encode_batch(texts)]

    batches, cur, longest = [], [], 0
    for i in sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i)):
        n = max(len(ids[i]), 1)
        if cur and ((len(cur) + 1) * max(longest, n) > args.batch_tokens or len(cur) >= 256):
            batches.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        batches.append(cur)

    def session(profile):
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.enable_profiling = profile
        return ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])

    def run(s):
        names = {i.name for i in s.get_inputs()}
        for b in batches:
            width = max(len(ids[i]) for i in b)
            x = np.zeros((len(b), width), np.int64)
            mask = np.zeros_like(x)
            for r, i in enumerate(b):
                x[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            feed = {"input_ids": x}
            if "attention_mask" in names:
                feed["attention_mask"] = mask
            if "token_type_ids" in names:
                feed["token_type_ids"] = np.zeros_like(x)
            s.run(None, feed)

    s = session(True)
    run(s)  # warm-up: memory arenas, kernels for new shapes
    run(s)
    path = s.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    second_pass = runs[len(batches)]
    seconds, flops = collections.Counter(), collections.Counter()
    run_s = 0.0
    for e in events:
        if e.get("ts", 0) < second_pass:
            continue
        if e.get("name") == "model_run":
            run_s += e["dur"] / 1e6
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"]["op_name"]
        seconds[op] += e["dur"] / 1e6
        # Constant weights are not in input_type_shape: 2 x output elements x K (input 0's last).
        ins = [list(d.values())[0] for d in e["args"].get("input_type_shape", [])]
        outs = [list(d.values())[0] for d in e["args"].get("output_type_shape", [])]
        if op in MATMULS and ins and outs and ins[0]:
            flops[op] += 2 * int(np.prod(outs[0])) * ins[0][-1]
    tokens = sum(len(x) for x in ids)
    total = sum(seconds.values())
    print(f"{os.path.basename(args.model)}: {len(ids)} rows, {tokens} tokens, {len(batches)} "
          f"micro-batches; model_run {run_s:.2f} s ({tokens / run_s:.0f} tokens/s), kernels {total:.2f} s")
    print(f"matrix products: {sum(flops.values()) / 1e9:.0f} GFLOP (int8 ones counted as ops) in "
          f"{sum(seconds[o] for o in flops) :.2f} s; whole model: "
          f"{sum(flops.values()) / run_s / 1e9:.0f} GFLOP/s")
    print(f"{'operator':<24} {'seconds':>8} {'share':>6} {'GFLOP/s':>8}")
    for op, sec in seconds.most_common():
        if sec < 0.005 * total:
            continue
        rate = flops[op] / sec / 1e9 if flops[op] else None
        print(f"{op:<24} {sec:>8.3f} {100 * sec / total:>5.1f}% " + (f"{rate:>8.0f}" if rate else ""))


if __name__ == "__main__":
    main()
