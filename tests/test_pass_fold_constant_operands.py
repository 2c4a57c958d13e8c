"""FoldConstantOperands: TVMScript Before/Expected, and bit-identical results."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from compile.passes import FoldConstantOperands

RNG = np.random.default_rng(5)
C1 = RNG.integers(-1000, 1000, (1, 1, 1, 8)).astype(np.int32)
C2 = RNG.integers(-1000, 1000, (1, 1, 1, 8)).astype(np.int32)
SCALE = RNG.uniform(0.5, 2, (1, 1, 1, 8)).astype(np.float32)


def _full(value, dtype, shape=(1, 1, 1, 8)):
    return np.full(shape, value, dtype)


@tvm.script.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 4, 4, 8), "int32"), f: R.Tensor((1, 4, 4, 8), "float32"),
             g: R.Tensor((1, 1, 1, 8), "float32")):
        with R.dataflow():
            a = R.add(x, R.const(_full(0, "int32")))             # dropped
            b = R.add(a, R.const(C1))
            c = R.add(b, R.const(C2))                              # merged into b's constant
            d = R.maximum(c, R.const(_full(-128, "int32")))       # shrunk
            e = R.multiply(R.const(_full(1, "float32")), f)       # dropped
            h = R.add(e, R.const(_full(0, "float32")))            # float + 0: shrunk only
            k = R.subtract(h, R.const(_full(0, "float32")))       # dropped
            m = R.multiply(k, R.const(SCALE))                      # per channel: kept
            n = R.divide(R.const(_full(1, "float32")), m)          # 1 / x: shrunk only
            grown = R.add(g, R.const(_full(0, "float32", (1, 4, 4, 8))))  # shapes the result
            out = (d, n, grown)
            R.output(out)
        return out


@tvm.script.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 4, 4, 8), "int32"), f: R.Tensor((1, 4, 4, 8), "float32"),
             g: R.Tensor((1, 1, 1, 8), "float32")):
        with R.dataflow():
            c = R.add(x, R.const(C1 + C2))
            d = R.maximum(c, R.const(_full(-128, "int32", (1, 1, 1, 1))))
            h = R.add(f, R.const(_full(0, "float32", (1, 1, 1, 1))))
            m = R.multiply(h, R.const(SCALE))
            n = R.divide(R.const(_full(1, "float32", (1, 1, 1, 1))), m)
            grown = R.add(g, R.const(_full(0, "float32", (1, 4, 4, 8))))
            out = (d, n, grown)
            R.output(out)
        return out


def _fold(mod: tvm.IRModule) -> tuple[tvm.IRModule, FoldConstantOperands]:
    fold = FoldConstantOperands()
    return relax.transform.DeadCodeElimination()(fold(mod)), fold


def test_rewrite_matches_expected():
    after, fold = _fold(Before)
    tvm.ir.assert_structural_equal(after, relax.transform.Normalize()(Expected))
    assert (fold.dropped, fold.shrunk, fold.merged) == (3, 3, 1)


def test_results_are_bit_identical():
    target = tvm.target.Target({"kind": "llvm"})

    def run(mod, *args):
        with target:
            mod = relax.get_pipeline("zero")(mod)
        vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
        return [t.numpy() for t in vm["main"](*[tvm.runtime.tensor(a) for a in args])]

    x = RNG.integers(-2**31, 2**31, (1, 4, 4, 8), dtype=np.int64).astype(np.int32)  # wraps
    f = RNG.standard_normal((1, 4, 4, 8)).astype(np.float32)
    f[0, 0, 0, :4] = [-0.0, 0.0, np.inf, np.nan]
    g = RNG.standard_normal((1, 1, 1, 8)).astype(np.float32)
    for before, after in zip(run(Before, x, f, g), run(_fold(Before)[0], x, f, g), strict=True):
        assert before.shape == after.shape
        assert before.tobytes() == after.tobytes()  # bit for bit, signed zeros and NaN too
