"""Builds a sentence-transformers model folder from an embedflow model folder (ONNX + configs).

    python st_model.py MODEL_DIR OUT_DIR

The GPU machine has no network and no Hugging Face cache, but it has sentence-transformers and
torch. The exported ONNX graph holds every weight of the BERT encoder: initialisers named like
the PyTorch state dict (`m.embeddings...`, biases, LayerNorms) and the MatMul weights, named by
the exporter (`onnx::MatMul_714`) and transposed, found through their node's name
(`/m/encoder/layer.0/attention/self/query/MatMul` is `encoder.layer.0.attention.self.query`).
The folder gets those weights as `model.safetensors` next to the model's own configs, so
`SentenceTransformer(OUT_DIR)` is sentence-transformers' own pipeline on the same weights.
"""
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import numpy_helper
from safetensors.numpy import save_file


def main() -> None:
    src, dst = sys.argv[1:3]
    model = onnx.load(os.path.join(src, "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    state = {}
    for name, value in inits.items():
        if name.startswith("m."):
            state[name[2:]] = value
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        weight = next((i for i in node.input if i in inits), None)
        if weight is None:
            continue
        module = node.name.strip("/").removeprefix("m/").removesuffix("/MatMul").replace("/", ".")
        state[f"{module}.weight"] = np.ascontiguousarray(inits[weight].T)
        bias = f"{module}.bias"
        if bias not in state:
            raise SystemExit(f"{module}: no bias initialiser {bias}")
    layers = {k.split(".")[2] for k in state if k.startswith("encoder.layer.")}
    expected = 5 + len(layers) * 16
    if len(state) != expected:
        raise SystemExit(f"found {len(state)} tensors, expected {expected}")
    os.makedirs(dst, exist_ok=True)
    save_file({k: v.astype(np.float32) for k, v in state.items()}, os.path.join(dst, "model.safetensors"))
    for f in os.listdir(src):
        p = os.path.join(src, f)
        if f != "model.onnx" and os.path.isfile(p):
            shutil.copy(p, dst)
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(dst, "1_Pooling"), dirs_exist_ok=True)
    os.makedirs(os.path.join(dst, "2_Normalize"), exist_ok=True)
    print(f"{dst}: {len(state)} tensors, {len(layers)} layers")


if __name__ == "__main__":
    main()
