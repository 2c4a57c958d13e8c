"""PropagateDequantize: TVMScript Before/Expected, what it leaves alone, bit-identical results."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R

from compile.passes import LowerQDQToInteger, PropagateDequantize

RNG = np.random.default_rng(5)
S, Z = np.float32(0.037), np.uint8(121)
W = RNG.integers(-127, 128, (12, 8)).astype(np.int8)  # [N, K]
S_W = np.linspace(0.01, 0.02, 12).astype(np.float32)
Z_W = np.zeros(12, np.int8)
W_CONV = RNG.integers(-127, 128, (4, 6, 1, 3)).astype(np.int8)
S_W_CONV = np.linspace(0.01, 0.03, 4).astype(np.float32)
Z_W_CONV = np.zeros(4, np.int8)


@tvm.script.ir_module
class Before:
    """ppocr_rec's CTC head and SVTR exit: squeeze, transpose, flatten; a concat of two tensors."""

    @R.function
    def main(x: R.Tensor((1, 8, 1, 5), "uint8"), a: R.Tensor((1, 2, 1, 5), "uint8"),
             b: R.Tensor((1, 4, 1, 5), "uint8")):
        with R.dataflow():
            dx = R.dequantize(x, R.const(S), R.const(Z), axis=1)
            sq = R.squeeze(dx, axis=[2])
            t = R.permute_dims(sq, axes=[0, 2, 1])
            flat = R.reshape(t, R.shape([5, 8]))
            dw = R.dequantize(R.const(W), R.const(S_W), R.const(Z_W), axis=0)
            head = R.matmul(flat, R.permute_dims(dw))
            da = R.dequantize(a, R.const(S), R.const(Z), axis=1)
            db = R.dequantize(b, R.const(S), R.const(Z), axis=1)
            cat = R.concat((da, db), axis=1)
            dwc = R.dequantize(R.const(W_CONV), R.const(S_W_CONV), R.const(Z_W_CONV), axis=0)
            conv = R.nn.conv2d(cat, dwc, padding=[0, 1, 0, 1])
            R.output(head, conv)
        return (head, conv)


@tvm.script.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 8, 1, 5), "uint8"), a: R.Tensor((1, 2, 1, 5), "uint8"),
             b: R.Tensor((1, 4, 1, 5), "uint8")):
        with R.dataflow():
            sq = R.squeeze(x, axis=[2])
            t = R.permute_dims(sq, axes=[0, 2, 1])
            flat = R.reshape(t, R.shape([5, 8]))
            dflat = R.dequantize(flat, R.const(S), R.const(Z), axis=-1)
            dw = R.dequantize(R.const(W), R.const(S_W), R.const(Z_W), axis=0)
            head = R.matmul(dflat, R.permute_dims(dw))
            cat = R.concat((a, b), axis=1)
            dcat = R.dequantize(cat, R.const(S), R.const(Z), axis=-1)
            dwc = R.dequantize(R.const(W_CONV), R.const(S_W_CONV), R.const(Z_W_CONV), axis=0)
            conv = R.nn.conv2d(dcat, dwc, padding=[0, 1, 0, 1])
            R.output(head, conv)
        return (head, conv)


def _run(mod: tvm.IRModule, *inputs: np.ndarray) -> list[np.ndarray]:
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    return [o.numpy() for o in vm["main"](*(tvm.runtime.tensor(v) for v in inputs))]


def _inputs() -> list[np.ndarray]:
    return [RNG.integers(0, 256, [int(d) for d in p.ty.shape.values]).astype(np.uint8)
            for p in Before["main"].params]


def test_dequantize_moves_past_data_movement_and_concat():
    propagate = PropagateDequantize()
    after = propagate(Before)
    tvm.ir.assert_structural_equal(after, relax.transform.Normalize()(Expected))
    assert propagate.moved == 4  # squeeze, permute_dims, reshape; the concat once


def test_moved_dequantize_is_bit_identical():
    inputs = _inputs()
    for ours, reference in zip(_run(PropagateDequantize()(Before), *inputs),
                               _run(Before, *inputs), strict=True):
        np.testing.assert_array_equal(ours, reference)


def test_the_head_and_the_concat_conv_are_then_computed_in_integers():
    lower = LowerQDQToInteger()
    lower(PropagateDequantize()(Before))
    assert sorted(lower.rewritten) == ["conv2d", "matmul"]
    lower(Before)
    assert lower.rewritten == []  # without the move: both stay float


@pytest.mark.parametrize("case", ["per_channel", "different_scales", "different_zero_points"])
def test_dequantize_that_does_not_commute_stays(case):
    bb = relax.BlockBuilder()
    a = relax.Var("a", relax.TensorType([1, 2, 1, 5], "uint8"))
    b = relax.Var("b", relax.TensorType([1, 2, 1, 5], "uint8"))
    scale_a = np.array([S, 2 * S], np.float32) if case == "per_channel" else S
    scale_b = np.float32(2 * S) if case == "different_scales" else S
    zero_b = np.uint8(Z + 1) if case == "different_zero_points" else Z
    with bb.function("main", [a, b]):
        with bb.dataflow():
            da = bb.emit(relax.op.dequantize(a, relax.const(scale_a),
                                             relax.const(np.full(np.shape(scale_a), Z)), axis=1))
            db = bb.emit(relax.op.dequantize(b, relax.const(scale_b), relax.const(zero_b),
                                             axis=1))
            moved = [relax.op.concat([da, db], axis=1)]
            if case == "per_channel":
                moved.append(relax.op.reshape(da, [2, 5]))
            out = bb.emit_output(relax.Tuple(moved))
        bb.emit_func_output(out)
    mod = bb.get()
    propagate = PropagateDequantize()
    tvm.ir.assert_structural_equal(propagate(mod), mod)
    assert propagate.moved == 0
