"""ScalarConstantOperands: TVMScript Before/Expected, the layout it keeps, bit-identical results."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from compile.passes import ScalarConstantOperands
from compile.pipeline import count_layout_transposes

RNG = np.random.default_rng(11)
W = RNG.standard_normal((8, 8, 1, 1)).astype(np.float32)
SCALE = RNG.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32)


def _one(value: float, shape: tuple) -> np.ndarray:
    return np.full(shape, value, np.float32)


@tvm.script.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 8, 4, 4), "float32")):
        with R.dataflow():
            y = R.nn.conv2d(x, R.const(W))
            a = R.multiply(R.const(_one(2.0, (1,))), y)        # first operand: scalar
            b = R.add(a, R.const(_one(3.0, (1,))))              # lower rank, second: scalar
            c = R.divide(R.const(_one(6.0, (1, 1, 1, 1))), b)   # first operand, same rank
            d = R.maximum(c, R.const(_one(0.0, (1, 1, 1, 1))))  # second, same rank: kept
            e = R.multiply(d, R.const(SCALE))                    # per channel: kept
            z = R.nn.conv2d(e, R.const(W))
            R.output(z)
        return z


@tvm.script.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 8, 4, 4), "float32")):
        with R.dataflow():
            y = R.nn.conv2d(x, R.const(W))
            a = R.multiply(R.const(2.0, "float32"), y)
            b = R.add(a, R.const(3.0, "float32"))
            c = R.divide(R.const(6.0, "float32"), b)
            d = R.maximum(c, R.const(_one(0.0, (1, 1, 1, 1))))
            e = R.multiply(d, R.const(SCALE))
            z = R.nn.conv2d(e, R.const(W))
            R.output(z)
        return z


def _nhwc(mod: tvm.IRModule) -> tvm.IRModule:
    return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)


def test_rewrite_matches_expected():
    scalars = ScalarConstantOperands()
    tvm.ir.assert_structural_equal(scalars(Before), relax.transform.Normalize()(Expected))
    assert scalars.rewritten == 3


def test_nhwc_stays_nhwc_between_the_convolutions():
    # Without the pass, each one-element operand takes the tensor back to NCHW and again to NHWC.
    assert count_layout_transposes(_nhwc(Before)) > 2
    assert count_layout_transposes(_nhwc(ScalarConstantOperands()(Before))) == 2  # the edges


def test_results_are_bit_identical():
    target = tvm.target.Target({"kind": "llvm"})

    def run(mod, x):
        with target:
            mod = relax.get_pipeline("zero")(mod)
        vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(x)).numpy()

    x = RNG.standard_normal((1, 8, 4, 4)).astype(np.float32)
    after = ScalarConstantOperands()(Before)
    expected = run(Before, x)
    np.testing.assert_array_equal(run(after, x), expected)
    np.testing.assert_array_equal(run(_nhwc(after), x), run(_nhwc(Before), x))
    assert not np.array_equal(expected, run(Before, x + 1))  # the check can fail
