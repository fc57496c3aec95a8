"""Turns an fp32 ONNX model into the precision embedflow was asked for (run once, then cached).

    python prepare_model.py SRC DST PRECISION [NUM_HEADS HIDDEN_SIZE]

int8: every MatMul with constant weights becomes ONNX Runtime's MatMulNBits with 8-bit symmetric
      weights in blocks of 128 along K and accuracy_level 4: activations are quantised to int8 per
      block of 128 per row and multiplied with VNNI. Per-tensor dynamic quantisation
      (quantize_dynamic) is faster but loses parity (minimum cosine 0.97 against
      sentence-transformers on the golden set); per-row blocks keep it above 0.99.
fp16: ONNX Runtime's BERT fusions for GPU (Attention, SkipLayerNormalization, BiasGelu), then
      weights and activations in fp16 with fp32 inputs and outputs.
Both first let ONNX Runtime fold constants (basic graph optimisations), so weights stored as int8
plus a scale (as in the offline default model) become plain initializers the tools can see.
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
        import onnxruntime.quantization.matmul_nbits_quantizer  # noqa: F401
        import onnxruntime.transformers.optimizer  # noqa: F401
    except ImportError as e:
        print(f"missing Python package {e.name!r}", file=sys.stderr)
        return 3
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(dst))) as work:
        return prepare(fold_constants(src, work), dst, precision)


def prepare(src: str, dst: str, precision: str) -> int:
    import onnx

    if precision == "int8":
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        block = 128
        cfg = DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=True, accuracy_level=4, bits=8
        )
        q = MatMulNBitsQuantizer(
            onnx.load(src), bits=8, block_size=block, is_symmetric=True,
            accuracy_level=4, algo_config=cfg,
        )
        q.process()
        quantised = sum(n.op_type == "MatMulNBits" for n in q.model.model.graph.node)
        if quantised == 0:
            print("the model has no MatMul with constant weights to quantise", file=sys.stderr)
            return 2
        q.model.save_model_to_file(dst, False)
    elif precision == "fp16":
        from onnxruntime.transformers import optimizer

        heads, hidden = int(sys.argv[4]), int(sys.argv[5])
        m = optimizer.optimize_model(
            src, model_type="bert", num_heads=heads, hidden_size=hidden,
            use_gpu=True, opt_level=1,
        )
        m.convert_float_to_float16(keep_io_types=True)
        m.save_model_to_file(dst, use_external_data_format=False)
    else:
        print(f"unknown precision {precision!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
