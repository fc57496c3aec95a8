"""Turns an fp32 ONNX model into the precision embedflow was asked for (run once, then cached).

    python prepare_model.py SRC DST int8 CALIBRATION_JSONL
    python prepare_model.py SRC DST fp16 NUM_HEADS HIDDEN_SIZE

int8: dynamic int8 (ONNX Runtime's quantize_dynamic: per-channel int8 weights, activations
      quantised per tensor at run time, VNNI kernels), made accurate in two ways:
      - SmoothQuant: each activation feeding MatMuls is divided per channel by
        s = max|x|^0.7 / max|w|^0.3 (an inserted Mul) and the weights' rows multiplied by s,
        which is exact in fp32 and moves activation outliers into the per-channel weight scales.
        max|x| comes from running the fp32 model on the calibration rows (CALIBRATION_JSONL:
        token ids of a fixed sample of paragraphs).
      - Outlier split for the down-projections (K > N: the feed-forward output, whose input is
        GELU's long-tailed output, where a few channels reach 3-5x the others' maxima). The
        OUTLIER_CHANNELS input channels with the largest calibration maxima are multiplied in
        fp32 (Gather + a K=4 MatMul); the rest go through dynamic int8 with their weight rows for
        those channels zeroed and the input clipped at the next channel's maximum, so the
        per-tensor activation scale is set by ordinary channels. Exact in fp32 up to the clip.
      - Per-row activation scales. quantize_dynamic quantises each activation with one scale
        for the whole tensor (DynamicQuantizeLinear), so a row's vector depended on the rows
        sharing its micro-batch (a long or unusual neighbour widened everyone's range). Each
        DynamicQuantizeLinear becomes a symmetric per-token quantisation (scale max|x|/127 over
        the hidden axis, zero point 128, QuantizeLinear), and each MatMulInteger + Cast + Mul
        becomes MatMulIntegerToFloat with the weight scales, times the row scale. A text then
        gets the same vector whatever else is in its batch, and the golden-set minimum cosine
        rises (0.9948 -> 0.9965) for about 5-10% of int8 speed.
      Plain per-tensor dynamic int8 gives a minimum cosine of 0.97-0.98 against
      sentence-transformers on the golden set; this recipe keeps it above 0.99. The script prints
      the minimum cosine between the fp32 and int8 models on the calibration rows.
fp16: ONNX Runtime's BERT fusions for GPU (Attention, SkipLayerNormalization, BiasGelu), then
      weights and activations in fp16 with fp32 inputs and outputs. A second output,
      `embedflow_mean_pooled` ([batch, hidden], fp32), is the token vectors' mean under the
      attention mask (sentence-transformers' mean pooling): where the model pools that way,
      embedflow asks for it alone and gets one vector per row from the GPU instead of every
      token's (a 256-token row: 1.5 KB instead of 393 KB).
Both first let ONNX Runtime fold constants (basic graph optimisations), so weights that a graph
computes from constants (int8 plus a scale, say) become plain initializers the tools can see.
Exit code 3 means a Python package is missing; stderr says which.
"""
import os
import sys
import tempfile


def fold_constants(src: str, workdir: str) -> str:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = os.path.join(workdir, "folded.onnx")
    ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    return so.optimized_model_filepath


def main() -> int:
    src, dst, precision = sys.argv[1:4]
    try:
        import onnx  # noqa: F401
        import onnx_ir  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
        import onnxruntime.transformers.optimizer  # noqa: F401
    except ImportError as e:
        print(f"missing Python package {e.name!r}", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as work:
        return prepare(fold_constants(src, work), dst, precision, work)


def prepare(src: str, dst: str, precision: str, work: str) -> int:
    if precision == "int8":
        return quantise_int8(src, dst, sys.argv[4], work)
    elif precision == "fp16":
        from onnxruntime.transformers import optimizer

        heads, hidden = int(sys.argv[4]), int(sys.argv[5])
        m = optimizer.optimize_model(
            src, model_type="bert", num_heads=heads, hidden_size=hidden,
            use_gpu=True, opt_level=0,  # constants are already folded; 1+ needs torch
        )
        m.convert_float_to_float16(keep_io_types=True)
        add_mean_pooled(m.model)
        m.save_model_to_file(dst, use_external_data_format=False)
    else:
        print(f"unknown precision {precision!r}", file=sys.stderr)
        return 2
    return 0


MEAN_POOLED = "embedflow_mean_pooled"


def add_mean_pooled(model):
    """Adds the output MEAN_POOLED: sum(hidden * mask) / max(sum(mask), 1e-9) over the tokens,
    in fp32, as sentence-transformers' Pooling(mode="mean") computes it. Nothing is added to a
    graph without an attention_mask input or a [batch, tokens, hidden] fp32 first output."""
    from onnx import TensorProto, helper

    inputs = {i.name for i in model.graph.input}
    out = model.graph.output[0]
    if "attention_mask" not in inputs or out.type.tensor_type.elem_type != TensorProto.FLOAT:
        return
    if len(out.type.tensor_type.shape.dim) != 3:
        return
    # Unsqueeze and ReduceSum take their axes as inputs from opset 13 on.
    if max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0) < 13:
        return
    p = "embedflow_pool/"
    model.graph.initializer.extend([
        helper.make_tensor(p + "axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor(p + "axis2", TensorProto.INT64, [1], [2]),
        helper.make_tensor(p + "eps", TensorProto.FLOAT, [], [1e-9]),
    ])
    model.graph.node.extend([
        helper.make_node("Cast", ["attention_mask"], [p + "mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [p + "mask", p + "axis2"], [p + "mask3"]),
        helper.make_node("Mul", [out.name, p + "mask3"], [p + "masked"]),
        helper.make_node("ReduceSum", [p + "masked", p + "axis1"], [p + "sum"], keepdims=0),
        helper.make_node("ReduceSum", [p + "mask3", p + "axis1"], [p + "count"], keepdims=0),
        helper.make_node("Max", [p + "count", p + "eps"], [p + "clamped"]),
        helper.make_node("Div", [p + "sum", p + "clamped"], [MEAN_POOLED]),
    ])
    hidden = out.type.tensor_type.shape.dim[2]
    model.graph.output.append(helper.make_tensor_value_info(
        MEAN_POOLED, TensorProto.FLOAT,
        ["batch", hidden.dim_value if hidden.HasField("dim_value") else "hidden"]))


SMOOTHING_ALPHA = 0.7
OUTLIER_CHANNELS = 4


def quantise_int8(src: str, dst: str, calibration: str, work: str) -> int:
    """Smoothed dynamic int8, with an outlier split for down-projections; see the module doc."""
    import json

    import numpy as np
    import onnx
    from onnx import helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(src)
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    inits = {t.name: t for t in model.graph.initializer}
    matmuls = [
        n for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2
    ]
    if not matmuls:
        print("the model has no MatMul with constant weights to quantise", file=sys.stderr)
        return 2
    down = {n.name for n in matmuls if inits[n.input[1]].dims[0] > inits[n.input[1]].dims[1]}
    consumers = {}
    for n in matmuls:
        consumers.setdefault(n.input[0], []).append(n)
    smooth = [a for a, ns in consumers.items() if all(n.name not in down for n in ns)]

    with open(calibration) as f:
        calib = [json.loads(line)["ids"] for line in f]
    amax = activation_maxima(model, smooth, calib)

    mul_after = {}
    for act in smooth:
        ns = consumers[act]
        weights = [numpy_helper.to_array(inits[n.input[1]]) for n in ns]
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = np.maximum(amax[act], 1e-5) ** SMOOTHING_ALPHA / np.maximum(wmax, 1e-5) ** (
            1 - SMOOTHING_ALPHA
        )
        scale = np.clip(scale, 1e-2, 1e2).astype(np.float32)
        for n, w in zip(ns, weights):
            inits[n.input[1]].CopyFrom(
                numpy_helper.from_array((w * scale[:, None]).astype(np.float32), n.input[1])
            )
            n.input[0] = act + "/smoothed"
        model.graph.initializer.append(
            numpy_helper.from_array((1.0 / scale).astype(np.float32), act + "/smooth_scale")
        )
        mul_after[act] = helper.make_node(
            "Mul", [act, act + "/smooth_scale"], [act + "/smoothed"], name=act + "/smooth"
        )
    nodes = []
    for act in smooth:
        if not any(act in n.output for n in model.graph.node):
            nodes.append(mul_after[act])  # a graph input
    for n in model.graph.node:
        nodes.append(n)
        nodes.extend(mul_after[o] for o in n.output if o in mul_after)
    del model.graph.node[:]
    model.graph.node.extend(nodes)

    fp32_parts = split_outliers(model, [n for n in model.graph.node if n.name in down], calib)

    smoothed = os.path.join(work, "smoothed.onnx")
    dynamic = os.path.join(work, "dynamic.onnx")
    onnx.save(model, smoothed)
    quantize_dynamic(
        smoothed, dynamic, per_channel=True, weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"], nodes_to_exclude=sorted(fp32_parts),
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    final = onnx.load(dynamic)
    # The clip is a Min until now: the quantiser takes a Clip in front of a quantised MatMul for
    # the activation's range and removes it. Clip itself runs 4x faster than a broadcast Min.
    for n in final.graph.node:
        if n.op_type == "Min" and n.name.endswith(CLIP_SUFFIX):
            x, top = n.input
            n.op_type = "Clip"
            del n.input[:]
            n.input.extend([x, "", top])
    per_row_activations(final)
    onnx.save(final, dst)
    agreement = min_cosine(src, dst, calib)
    print(json.dumps({
        "smoothed_dynamic": len(matmuls) - len(down),
        "outlier_split": len(down),
        "calibration_min_cosine": agreement,
    }))
    return 0


CLIP_SUFFIX = "/outlier_clip"


def per_row_activations(model):
    """Rewrites quantize_dynamic's per-tensor activation quantisation as per-token (in place).

    DynamicQuantizeLinear(x) -> (q, s, zp) becomes s = max(max x, -min x, eps) / 127 over the
    last axis (shape [..., 1]), q = QuantizeLinear(x as [tokens, channels], s per token, 128) (uint8,
    symmetric around 128; per-axis, so x is read once and not divided first), and each
    MatMulInteger(q, W, zp, W_zp) -> Cast -> Mul(s * W_scale) becomes
    MatMulIntegerToFloat(q, W, 1, W_scale, 128, W_zp) * s. Every token's quantisation depends on
    that token alone, so a row's vector does not depend on its batch neighbours. (ONNX Runtime's
    own fusion of the unfused pattern assumes a scalar activation scale, hence the explicit
    MatMulIntegerToFloat.) Recipe 5 (max and min instead of Abs, the per-axis quantiser instead
    of Div and a scalar one) gives recipe 4's vectors bit for bit with two passes fewer.
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    consumers, producer = {}, {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n
    drop, replace, inits = set(), {}, []
    for i, n in enumerate(model.graph.node):
        if not n.name:
            n.name = f"{n.op_type}_{i}"
    for n in model.graph.node:
        if n.op_type != "DynamicQuantizeLinear":
            continue
        x, (q, s, zp), p = n.input[0], n.output, n.name
        one = p + "/one"
        inits += [
            numpy_helper.from_array(np.array(1.0, np.float32), one),
            numpy_helper.from_array(np.array(1 / 127, np.float32), p + "/inv127"),
            numpy_helper.from_array(np.array(1e-8, np.float32), p + "/eps"),
            numpy_helper.from_array(np.array(128, np.uint8), zp),
            numpy_helper.from_array(np.array([-1], np.int64), p + "/flat"),
        ]
        zp_row = helper.make_tensor(p + "/zp_value", TensorProto.UINT8, [1], [128])
        replace[n.name] = [
            helper.make_node("ReduceMax", [x], [p + "/hi"], axes=[-1], keepdims=1, name=p + "/hi"),
            helper.make_node("ReduceMin", [x], [p + "/lo"], axes=[-1], keepdims=1, name=p + "/lo"),
            helper.make_node("Neg", [p + "/lo"], [p + "/neg_lo"], name=p + "/neg_lo"),
            helper.make_node("Max", [p + "/hi", p + "/neg_lo", p + "/eps"], [p + "/amax_eps"],
                             name=p + "/amax_eps"),
            helper.make_node("Mul", [p + "/amax_eps", p + "/inv127"], [s], name=p + "/row_scale"),
            helper.make_node("Reshape", [s, p + "/flat"], [p + "/s_rows"], name=p + "/s_rows"),
            helper.make_node("Flatten", [x], [p + "/x_rows"], axis=-1, name=p + "/x_rows"),
            helper.make_node("Shape", [p + "/s_rows"], [p + "/rows"], name=p + "/rows"),
            helper.make_node("ConstantOfShape", [p + "/rows"], [p + "/zp_rows"], value=zp_row,
                             name=p + "/zp_rows"),
            helper.make_node("QuantizeLinear", [p + "/x_rows", p + "/s_rows", p + "/zp_rows"],
                             [p + "/q_rows"], axis=0, name=p + "/quantize"),
            helper.make_node("Shape", [x], [p + "/x_shape"], name=p + "/x_shape"),
            helper.make_node("Reshape", [p + "/q_rows", p + "/x_shape"], [q], name=p + "/q"),
        ]
        for mmi in consumers[q]:
            (cast,) = consumers[mmi.output[0]]
            (mul,) = consumers[cast.output[0]]
            if mmi.op_type != "MatMulInteger" or cast.op_type != "Cast" or mul.op_type != "Mul":
                raise ValueError(f"unexpected quantised pattern at {mmi.name}")
            scale_mul = producer[next(i for i in mul.input if i != cast.output[0])]
            if scale_mul.op_type != "Mul" or s not in scale_mul.input:
                raise ValueError(f"unexpected scale pattern at {mul.name}")
            w_scale = next(i for i in scale_mul.input if i != s)
            y = mul.output[0]
            drop.update([cast.name, mul.name, scale_mul.name])
            replace[mmi.name] = [
                helper.make_node("MatMulIntegerToFloat",
                                 [q, mmi.input[1], one, w_scale, zp, mmi.input[3]],
                                 [y + "/unscaled"], domain="com.microsoft",
                                 name=mmi.name + "/to_float"),
                helper.make_node("Mul", [y + "/unscaled", s], [y], name=mmi.name + "/row_scaled"),
            ]
    nodes = [r for n in model.graph.node if n.name not in drop for r in replace.get(n.name, [n])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def split_outliers(model, nodes, calib):
    """Rewrites each MatMul in `nodes` (in place) as int8-friendly main part + fp32 outlier part.

    y = x @ W becomes min(x, t) @ W_rest + x[..., idx] @ W[idx], where idx are the
    OUTLIER_CHANNELS channels of x with the largest calibration maxima, W_rest is W with those
    rows zeroed and t is the largest calibration maximum of the other channels. Returns the
    names of the outlier MatMuls, which stay fp32.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    if not nodes:
        return set()
    inits = {t.name: t for t in model.graph.initializer}
    maxima = activation_maxima(model, [n.input[0] for n in nodes], calib)
    added, fp32_parts = {}, set()
    for n in nodes:
        x, w = n.input[0], numpy_helper.to_array(inits[n.input[1]])
        k = min(OUTLIER_CHANNELS, w.shape[0] - 1)
        order = np.argsort(maxima[x])[::-1]
        idx, top = np.sort(order[:k]), float(maxima[x][order[k]])
        rest = w.copy()
        rest[idx, :] = 0
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(rest.astype(np.float32), n.input[1]))
        p, out = n.name, n.output[0]
        model.graph.initializer.extend([
            numpy_helper.from_array(np.array(top, np.float32), p + "/clip_max"),
            numpy_helper.from_array(idx.astype(np.int64), p + "/outlier_idx"),
            numpy_helper.from_array(w[idx, :].astype(np.float32), p + "/outlier_w"),
        ])
        before = [
            helper.make_node("Min", [x, p + "/clip_max"], [p + "/clipped"], name=p + CLIP_SUFFIX),
            helper.make_node("Gather", [x, p + "/outlier_idx"], [p + "/outliers"],
                             name=p + "/outlier_gather", axis=-1),
        ]
        after = [
            helper.make_node("MatMul", [p + "/outliers", p + "/outlier_w"],
                             [p + "/outlier_out"], name=p + "/outlier_matmul"),
            helper.make_node("Add", [p + "/main_out", p + "/outlier_out"], [out],
                             name=p + "/outlier_join"),
        ]
        n.input[0], n.output[0] = p + "/clipped", p + "/main_out"
        added[p] = (before, after)
        fp32_parts.add(p + "/outlier_matmul")
    nodes_in_order = []
    for n in model.graph.node:
        before, after = added.get(n.name, ([], []))
        nodes_in_order.extend(before + [n] + after)
    del model.graph.node[:]
    model.graph.node.extend(nodes_in_order)
    return fp32_parts


def run_rows(session, ids_list, outputs=None):
    import numpy as np

    names = {i.name for i in session.get_inputs()}
    for ids in ids_list:
        x = np.array([ids], dtype=np.int64)
        feed = {"input_ids": x}
        if "attention_mask" in names:
            feed["attention_mask"] = np.ones_like(x)
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(x)
        yield session.run(outputs, feed)


def activation_maxima(model, acts, calib):
    """Per-channel maximum |activation| of each tensor in `acts` over the calibration rows."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for a in acts:
        probe.graph.output.append(helper.make_tensor_value_info(a, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    amax = {}
    for outs in run_rows(session, calib, acts):
        for a, o in zip(acts, outs):
            m = np.abs(o.reshape(-1, o.shape[-1])).max(axis=0)
            amax[a] = np.maximum(amax.get(a, 0), m)
    return amax


def min_cosine(reference, quantised, calib):
    """Lowest cosine between mean-pooled outputs of the two models over the calibration rows."""
    import numpy as np
    import onnxruntime as ort

    def pooled(path):
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return [outs[0][0].mean(axis=0) for outs in run_rows(s, calib)]

    a, b = pooled(reference), pooled(quantised)
    return float(min(np.dot(x, y) / (np.linalg.norm(x) * np.linalg.norm(y)) for x, y in zip(a, b)))


if __name__ == "__main__":
    sys.exit(main())
