"""LowerQDQToInteger: TVMScript Before/Expected, and a tiny QDQ model against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from compile.passes import LowerQDQToInteger, PropagateDequantize

RNG = np.random.default_rng(3)
W_CONV = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
S_W_CONV = np.array([0.01, 0.02, 0.015, 0.03], np.float32)
Z_W_CONV = np.zeros(4, np.int8)
B_CONV = RNG.integers(-500, 500, 4).astype(np.int32)
S_X, Z_X, S_Y, Z_Y = 0.05, 120, 0.1, 3

W_MM = RNG.integers(-127, 128, (6, 8)).astype(np.int8)  # Gemm weight [N, K] (transB)
S_W_MM = np.linspace(0.01, 0.02, 6).astype(np.float32)
Z_W_MM = np.zeros(6, np.int8)
B_MM = RNG.integers(-300, 300, 6).astype(np.int32)


@tvm.script.ir_module
class ConvBefore:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "uint8")) -> R.Tensor((1, 4, 8, 8), "uint8"):
        with R.dataflow():
            dx = R.dequantize(x, R.const(S_X, "float32"), R.const(Z_X, "uint8"), axis=1)
            dw = R.dequantize(R.const(W_CONV), R.const(S_W_CONV), R.const(Z_W_CONV), axis=0)
            conv = R.nn.conv2d(dx, dw, padding=[1, 1, 1, 1])
            db = R.dequantize(R.const(B_CONV), R.const(S_X * S_W_CONV), R.const(0, "int32"),
                              axis=0)
            bias = R.reshape(db, R.shape([1, 4, 1, 1]))
            act = R.nn.relu(R.add(conv, bias))
            y = R.quantize(act, R.const(S_Y, "float32"), R.const(Z_Y, "uint8"), axis=1,
                           out_dtype="uint8")
            R.output(y)
        return y


def conv_expected_constants():
    sums = W_CONV.astype(np.int64).sum(axis=(1, 2, 3))
    scale = S_X * S_W_CONV.astype(np.float64)
    bias = np.round(B_CONV * (S_X * S_W_CONV).astype(np.float64) / scale)
    offset = (bias - Z_X * sums).astype(np.int32).reshape(1, 4, 1, 1)
    multiplier = (scale / S_Y).astype(np.float32).reshape(1, 4, 1, 1)
    return offset, multiplier


OFFSET_CONV, MULT_CONV = conv_expected_constants()


@tvm.script.ir_module
class ConvExpected:
    @R.function
    def main(x: R.Tensor((1, 3, 8, 8), "uint8")) -> R.Tensor((1, 4, 8, 8), "uint8"):
        with R.dataflow():
            # The float zero pad is the zero point in the quantized domain.
            padded = R.nn.pad(x, [0, 0, 0, 0, 1, 1, 1, 1], "constant", float(Z_X))
            acc = R.nn.conv2d(padded, R.const(W_CONV), padding=[0, 0, 0, 0], out_dtype="int32")
            acc2 = R.add(acc, R.const(OFFSET_CONV))
            value = R.round(R.multiply(R.astype(acc2, "float32"), R.const(MULT_CONV)))
            clipped = R.clip(R.add(value, R.const(np.float32(Z_Y))), Z_Y, 255)  # ReLU: >= z_y
            y = R.astype(clipped, "uint8")
            R.output(y)
        return y


@tvm.script.ir_module
class GemmBefore:
    @R.function
    def main(x: R.Tensor((2, 8), "int8")) -> R.Tensor((2, 6), "int8"):
        with R.dataflow():
            dx = R.dequantize(x, R.const(S_X, "float32"), R.const(0, "int8"))
            dw = R.dequantize(R.const(W_MM), R.const(S_W_MM), R.const(Z_W_MM), axis=0)
            mm = R.matmul(dx, R.permute_dims(dw))
            db = R.dequantize(R.const(B_MM), R.const(S_X * S_W_MM), R.const(0, "int32"))
            y = R.quantize(R.add(mm, db), R.const(S_Y, "float32"), R.const(0, "int8"),
                           out_dtype="int8")
            R.output(y)
        return y


MULT_MM = (S_X * S_W_MM.astype(np.float64) / S_Y).astype(np.float32).reshape(6)
OFFSET_MM = np.round(B_MM * (S_X * S_W_MM).astype(np.float64) /
                     (S_X * S_W_MM.astype(np.float64))).astype(np.int32).reshape(6)


@tvm.script.ir_module
class GemmExpected:
    @R.function
    def main(x: R.Tensor((2, 8), "int8")) -> R.Tensor((2, 6), "int8"):
        with R.dataflow():
            acc = R.matmul(x, R.const(np.ascontiguousarray(W_MM.T)), out_dtype="int32")
            acc2 = R.add(acc, R.const(OFFSET_MM))
            value = R.round(R.multiply(R.astype(acc2, "float32"), R.const(MULT_MM)))
            clipped = R.clip(R.add(value, R.const(np.float32(0.0))), -128, 127)
            y = R.astype(clipped, "int8")
            R.output(y)
        return y


B_FLOAT = RNG.standard_normal(6).astype(np.float32)


@tvm.script.ir_module
class FlattenGemmBefore:
    """A classifier head: Flatten after the dequantize (PropagateDequantize moves it), float Gemm
    output (no quantize)."""

    @R.function
    def main(x: R.Tensor((1, 8, 1, 1), "uint8")) -> R.Tensor((1, 6), "float32"):
        with R.dataflow():
            dx = R.dequantize(x, R.const(S_X, "float32"), R.const(Z_X, "uint8"), axis=1)
            flat = R.reshape(dx, R.shape([1, 8]))
            dw = R.dequantize(R.const(W_MM), R.const(S_W_MM), R.const(Z_W_MM), axis=-2)
            mm = R.matmul(flat, R.permute_dims(dw))
            y = R.add(mm, R.const(B_FLOAT))
            R.output(y)
        return y


@tvm.script.ir_module
class FlattenGemmExpected:
    @R.function
    def main(x: R.Tensor((1, 8, 1, 1), "uint8")) -> R.Tensor((1, 6), "float32"):
        with R.dataflow():
            flat = R.reshape(x, R.shape([1, 8]))
            acc = R.matmul(flat, R.const(np.ascontiguousarray(W_MM.T)), out_dtype="int32")
            offset = (-Z_X * W_MM.astype(np.int64).sum(axis=1)).astype(np.int32)
            acc2 = R.add(acc, R.const(offset))
            scale = (np.float64(np.float32(S_X)) * S_W_MM.astype(np.float64)).astype(np.float32)
            mm = R.multiply(R.astype(acc2, "float32"), R.const(scale))
            y = R.add(mm, R.const(B_FLOAT))
            R.output(y)
        return y


@pytest.mark.parametrize("before, expected, ops", [
    (ConvBefore, ConvExpected, ["conv2d"]),
    (GemmBefore, GemmExpected, ["matmul"]),
    (FlattenGemmBefore, FlattenGemmExpected, ["matmul"]),
])
def test_rewrite_matches_expected(before, expected, ops):
    lower = LowerQDQToInteger()
    after = lower(PropagateDequantize()(before))  # as the pipeline runs them
    tvm.ir.assert_structural_equal(after, relax.transform.Normalize()(expected))
    assert lower.rewritten == ops


def test_asymmetric_weights_are_left_alone():
    @tvm.script.ir_module
    class Asymmetric:
        @R.function
        def main(x: R.Tensor((2, 8), "int8")) -> R.Tensor((2, 6), "int8"):
            with R.dataflow():
                dx = R.dequantize(x, R.const(S_X, "float32"), R.const(0, "int8"))
                dw = R.dequantize(R.const(W_MM), R.const(S_W_MM),
                                  R.const(np.full(6, 3, np.int8)), axis=0)
                mm = R.matmul(dx, R.permute_dims(dw))
                y = R.quantize(mm, R.const(S_Y, "float32"), R.const(0, "int8"), out_dtype="int8")
                R.output(y)
            return y

    lower = LowerQDQToInteger()
    tvm.ir.assert_structural_equal(lower(Asymmetric), Asymmetric)
    assert lower.rewritten == []


def _run(mod, x):
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("before", [ConvBefore, GemmBefore, FlattenGemmBefore])
def test_integer_result_equals_fake_quant_within_one_step(before):
    shape = [int(d) for d in before["main"].params[0].ty.shape.values]
    dtype = str(before["main"].params[0].ty.dtype)
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max + 1, shape).astype(dtype)
    fake, integer = _run(before, x), _run(LowerQDQToInteger()(PropagateDequantize()(before)), x)
    if fake.dtype.kind == "f":  # dequantized output: the integer sum is exact
        np.testing.assert_allclose(integer, fake, rtol=1e-5, atol=1e-5)
        return
    fake, integer = fake.astype(np.int32), integer.astype(np.int32)
    assert np.abs(fake - integer).max() <= 1
    assert (fake == integer).mean() > 0.95


def _tiny_qdq(tiny_dir, tmp_path):
    """conv-bn-relu quantized by ONNX Runtime (uint8 activations, int8 weights per channel)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from compile.datasets import SampleSet
    from compile.quantize import _reader

    calib = SampleSet([{"x": RNG.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)}
                       for _ in range(16)], "uniform noise")
    qdq = tmp_path / "qdq.onnx"
    quantize_static(str(tiny_dir / "conv_bn_relu.onnx"), str(qdq), _reader(calib),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return onnx.load(str(qdq))


def _integer_against_onnxruntime(qdq: onnx.ModelProto, data_dtypes: list[str]) -> list[float]:
    """Compute ``qdq`` with LowerQDQToInteger and ONNX Runtime; the largest error of each input,
    in units of the output's quantization step."""
    import onnxruntime as ort
    from tvm.relax.frontend.onnx import from_onnx

    lower = LowerQDQToInteger()
    mod = lower(from_onnx(qdq, shape_dict={"x": [1, 3, 16, 16]}))
    assert lower.rewritten == ["conv2d", "conv2d"]
    convs = [binding.value for f in mod.functions.values() if isinstance(f, relax.Function)
             for block in f.body.blocks for binding in block.bindings
             if isinstance(binding.value, relax.Call)
             and binding.value.op.name == "relax.nn.conv2d"]
    assert [str(conv.args[0].ty.dtype) for conv in convs] == data_dtypes
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(qdq.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    producers = {o: n for n in qdq.graph.node for o in n.output}
    scale_name = producers[qdq.graph.output[0].name].input[1]
    step = float(next(onnx.numpy_helper.to_array(i) for i in qdq.graph.initializer
                      if i.name == scale_name).max())
    errors = []
    for seed in range(3):
        x = np.random.default_rng(seed).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
        errors.append(float(np.abs(_run(mod, x) - session.run(None, {"x": x})[0]).max()) / step)
    return errors


def test_tiny_qdq_model_matches_onnxruntime(tiny_dir, tmp_path):
    """conv-bn-relu: integer result equals ORT's QDQ evaluation, or one quantization step off."""
    assert max(_integer_against_onnxruntime(_tiny_qdq(tiny_dir, tmp_path),
                                            ["uint8", "uint8"])) <= 1.001


def test_int16_activations_match_onnxruntime_and_are_closer_to_float(tiny_dir, tmp_path):
    """16-bit activations (quant.activation_type=int16): 16-bit convolutions, ORT's result within
    one 16-bit step, and nearer float32 than 8-bit activations are.

    ONNX Runtime's calibrator removed the ReLU (its uint8 quantizer with zero point 0 clips at 0
    instead), so the ReLU's output must become uint16, not int16, to stay non-negative.
    """
    import onnxruntime as ort

    from compile.quantize import widen_activations

    qdq8 = _tiny_qdq(tiny_dir, tmp_path)
    qdq16 = onnx.ModelProto()
    qdq16.CopyFrom(qdq8)
    activations = sum(n.op_type == "QuantizeLinear" for n in qdq8.graph.node)
    assert activations >= 3  # the input and the two convolutions' outputs at least
    assert widen_activations(qdq16, margin=2.0) == activations
    assert not any(n.op_type == "Relu" for n in qdq16.graph.node)
    zero_points = [onnx.numpy_helper.to_array(i) for i in qdq16.graph.initializer
                   if i.name.endswith("16_zero_point")]
    assert len(zero_points) == activations and not any(z.any() for z in zero_points)
    # opset < 21: ONNX Runtime's com.microsoft 16-bit Q/DQ
    assert {n.domain for n in qdq16.graph.node if "QuantizeLinear" in n.op_type} == {
        "com.microsoft"}
    # the input is signed, the ReLU's output (the second convolution's input) is not
    assert max(_integer_against_onnxruntime(qdq16, ["int16", "uint16"])) <= 1.001

    fp32 = ort.InferenceSession(str(tiny_dir / "conv_bn_relu.onnx"),
                                providers=["CPUExecutionProvider"])
    x = np.random.default_rng(9).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
    reference = fp32.run(None, {"x": x})[0]

    def error(model):
        session = ort.InferenceSession(model.SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        return np.abs(session.run(None, {"x": x})[0] - reference).max()

    assert error(qdq16) < error(qdq8) / 2  # 8-bit weights in both (here 0.05 against 0.13)


S_X_DW = np.linspace(0.02, 0.06, 4).astype(np.float32)  # per-channel input scales (NNCF)
W_DW = RNG.integers(-127, 128, (4, 1, 3, 3)).astype(np.int8)


def _depthwise(zero_points: np.ndarray) -> tvm.IRModule:
    """Depthwise 3x3 conv (padding 1) on a per-channel quantized uint8 input."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4, 6, 6], "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            dx = bb.emit(relax.op.dequantize(x, relax.const(S_X_DW), relax.const(zero_points),
                                             axis=1))
            dw = bb.emit(relax.op.dequantize(relax.const(W_DW), relax.const(S_W_CONV),
                                             relax.const(Z_W_CONV), axis=0))
            conv = bb.emit(relax.op.nn.conv2d(dx, dw, padding=[1, 1, 1, 1], groups=4))
            y = bb.emit_output(relax.op.quantize(conv, relax.const(S_Y, "float32"),
                                                 relax.const(Z_Y, "uint8"), axis=1,
                                                 out_dtype="uint8"))
        bb.emit_func_output(y)
    return bb.get()


@pytest.mark.parametrize(("zero_points", "layout_convertible", "data_dtype"), [
    (np.zeros(4, np.uint8), True, "uint8"),  # one zero point: the data stays uint8
    (np.zeros(4, np.uint8), False, "int16"),  # the NCHW form centres every per-channel input
    (np.array([0, 3, 0, 7], np.uint8), True, "int16"),  # mixed zero points: centred
])
def test_per_channel_depthwise_input_is_centred_only_when_needed(zero_points, layout_convertible,
                                                                 data_dtype):
    before = _depthwise(zero_points)
    lower = LowerQDQToInteger(layout_convertible=layout_convertible)
    after = lower(before)
    assert lower.rewritten == ["conv2d"]
    convs = []
    relax.analysis.post_order_visit(after["main"], lambda e: convs.append(e) if (
        isinstance(e, relax.Call) and getattr(e.op, "name", "") == "relax.nn.conv2d") else None)
    assert [str(c.args[0].ty.dtype) for c in convs] == [data_dtype]
    x = RNG.integers(0, 256, (1, 4, 6, 6)).astype(np.uint8)
    fake, integer = _run(before, x).astype(np.int32), _run(after, x).astype(np.int32)
    assert np.abs(fake - integer).max() <= 1
    assert (fake == integer).mean() > 0.95
