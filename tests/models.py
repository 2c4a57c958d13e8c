"""Tiny ONNX models built in the tests with onnx.helper (checked, shapes inferred)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RNG = np.random.default_rng(0)


def value(name: str, shape) -> onnx.ValueInfoProto:
    """A float32 graph input/output."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _init(name: str, shape, scale: float = 0.5) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def finish(graph: onnx.GraphProto, opset: int = 17) -> onnx.ModelProto:
    """Wrap a graph in a model, check it and infer shapes."""
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def conv_bn_relu() -> onnx.ModelProto:
    """x float32 [1, 3, 16, 16] -> Conv 3x3 (8 ch) -> BatchNormalization -> Relu -> Conv 1x1."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ]
    var = numpy_helper.from_array(RNG.uniform(0.5, 1.5, 8).astype(np.float32), "var")
    inits = [_init("w1", (8, 3, 3, 3)), _init("b1", (8,)), _init("g", (8,)), _init("beta", (8,)),
             _init("mean", (8,)), var, _init("w2", (4, 8, 1, 1))]
    graph = helper.make_graph(nodes, "conv_bn_relu",
                              [value("x", [1, 3, 16, 16])],
                              [value("y", [1, 4, 16, 16])],
                              inits)
    return finish(graph)


def inverted_residual() -> onnx.ModelProto:
    """A MobileNetV2 block and head, x float32 [1, 8, 12, 12] -> y float32 [1, 5].

    Conv 1x1 (16) -> Clip(0, 6) -> depthwise 3x3 -> Clip(0, 6) -> Conv 1x1 (8) -> Add x ->
    GlobalAveragePool -> Flatten -> Gemm (5); the Clips take their bounds as inputs (opset 17).
    """
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], group=16, pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3"], ["c3"]),
        helper.make_node("Add", ["c3", "x"], ["res"]),
        helper.make_node("GlobalAveragePool", ["res"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w4", "b4"], ["y"], transB=1),
    ]
    inits = [_init("w1", (16, 8, 1, 1)), _init("b1", (16,)), _init("w2", (16, 1, 3, 3)),
             _init("b2", (16,)), _init("w3", (8, 16, 1, 1)), _init("w4", (5, 8)),
             _init("b4", (5,)),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    graph = helper.make_graph(nodes, "inverted_residual", [value("x", [1, 8, 12, 12])],
                              [value("y", [1, 5])], inits)
    return finish(graph)


def matmul_gelu_layernorm(batch: int | str = 1) -> onnx.ModelProto:
    """x float32 [batch, 8, 64] -> MatMul+Add (128) -> Gelu -> LayerNormalization, opset 20."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["lin"]),
        helper.make_node("Gelu", ["lin"], ["act"]),
        helper.make_node("LayerNormalization", ["act", "ln_g", "ln_b"], ["y"], axis=-1),
    ]
    inits = [_init("w", (64, 128), 0.2), _init("b", (128,)), _init("ln_g", (128,)),
             _init("ln_b", (128,))]
    graph = helper.make_graph(nodes, "matmul_gelu_layernorm",
                              [value("x", [batch, 8, 64])],
                              [value("y", [batch, 8, 128])],
                              inits)
    return finish(graph, opset=20)


def conv_transpose_head() -> onnx.ModelProto:
    """Upsampling by transposed convolutions, x float32 [1, 8, 6, 6] -> y float32 [1, 2, 72, 72].

    ConvTranspose kernel 2 stride 2 (4 ch, bias) -> Relu -> ConvTranspose kernel 3 stride 3
    (2 ch, bias) -> Sigmoid -> ConvTranspose kernel 3 stride 2, pads 1, output_padding 1
    (2 ch; overlapping windows) -> y. The first two are rewritten into 1x1 convolutions and
    depth-to-space, the third is not (``compile.passes.ConvTransposeToDepthToSpace``).
    """
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w1", "b1"], ["t1"], strides=[2, 2]),
        helper.make_node("Relu", ["t1"], ["r1"]),
        helper.make_node("ConvTranspose", ["r1", "w2", "b2"], ["t2"], kernel_shape=[3, 3],
                         strides=[3, 3]),
        helper.make_node("Sigmoid", ["t2"], ["s2"]),
        helper.make_node("ConvTranspose", ["s2", "w3"], ["y"], strides=[2, 2],
                         pads=[1, 1, 1, 1], output_padding=[1, 1]),
    ]
    inits = [_init("w1", (8, 4, 2, 2)), _init("b1", (4,)), _init("w2", (4, 2, 3, 3)),
             _init("b2", (2,)), _init("w3", (2, 2, 3, 3))]
    graph = helper.make_graph(nodes, "conv_transpose_head", [value("x", [1, 8, 6, 6])],
                              [value("y", [1, 2, 72, 72])], inits)
    return finish(graph)


def if_model() -> onnx.ModelProto:
    """x float32 [1, 4]: y = relu(2x) if sum(x) > 0 else x - 1 (an If with two branches)."""
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t0"]), helper.make_node("Relu", ["t0"], ["t"])],
        "then", [], [value("t", [1, 4])])
    else_graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["e"])],
        "else", [], [value("e", [1, 4])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    graph = helper.make_graph(nodes, "if_model",
                              [value("x", [1, 4])],
                              [value("y", [1, 4])],
                              [two, one, zero])
    return finish(graph)


def recurrent_model() -> onnx.ModelProto:
    """An LSTM in the main graph and a GRU inside an If branch: both unsupported by TVM 0.27."""
    hidden = 4
    lstm_w = _init("lstm_w", (1, 4 * hidden, 3))
    lstm_r = _init("lstm_r", (1, 4 * hidden, hidden))
    gru_w = _init("gru_w", (1, 3 * hidden, hidden))
    gru_r = _init("gru_r", (1, 3 * hidden, hidden))
    then_graph = helper.make_graph(
        [helper.make_node("GRU", ["h", "gru_w", "gru_r"], ["", "g"], hidden_size=hidden),
         helper.make_node("Reshape", ["g", "shape"], ["t"])],
        "then", [], [value("t", [1, hidden])])
    else_graph = helper.make_graph(
        [helper.make_node("Reshape", ["h", "shape"], ["e"])],
        "else", [], [value("e", [1, hidden])])
    shape = numpy_helper.from_array(np.array([1, hidden], np.int64), "shape")
    nodes = [
        helper.make_node("LSTM", ["x", "lstm_w", "lstm_r"], ["", "h"], hidden_size=hidden),
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
    ]
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    graph = helper.make_graph(nodes, "recurrent",
                              [value("x", [5, 1, 3])],
                              [value("y", [1, hidden])],
                              [lstm_w, lstm_r, gru_w, gru_r, shape, zero])
    return finish(graph)


def save(model: onnx.ModelProto, folder: Path, name: str) -> Path:
    """Save a model as ``folder/name.onnx`` and return the path."""
    path = folder / f"{name}.onnx"
    onnx.save(model, str(path))
    return path
