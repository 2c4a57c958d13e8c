"""FoldConstantTransposes: TVMScript Before/Expected, what it leaves, FoldConstant's result."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from compile.passes import FoldConstantTransposes

RNG = np.random.default_rng(5)
W = RNG.integers(-128, 128, (8, 4, 3, 3)).astype(np.int8)
SCALE = RNG.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32)


@tvm.script.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 6, 6, 8), "float32")):
        with R.dataflow():
            w = R.permute_dims(R.const(W), axes=[0, 2, 3, 1])  # OIHW -> OHWI
            s = R.permute_dims(R.const(SCALE), axes=[0, 2, 3, 1])
            t = R.permute_dims(R.const(SCALE))  # no axes: reversed
            y = R.multiply(x, s)
            z = R.permute_dims(y, axes=[0, 3, 1, 2])  # an activation: kept
            R.output(w, t, z)
        return (w, t, z)


@tvm.script.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 6, 6, 8), "float32")):
        with R.dataflow():
            w = R.const(W.transpose(0, 2, 3, 1).copy())
            s = R.const(SCALE.transpose(0, 2, 3, 1).copy())
            t = R.const(SCALE.transpose().copy())
            y = R.multiply(x, s)
            z = R.permute_dims(y, axes=[0, 3, 1, 2])
            R.output(w, t, z)
        return (w, t, z)


def test_rewrite_matches_expected():
    folded = FoldConstantTransposes()
    tvm.ir.assert_structural_equal(folded(Before), relax.transform.Normalize()(Expected))
    assert folded.rewritten == 3


def test_same_module_as_tvms_fold_constant():
    """TVM's FoldConstant builds and runs a kernel per transpose; the result is the same."""
    with tvm.target.Target({"kind": "llvm"}):
        ours = relax.transform.FoldConstant()(FoldConstantTransposes()(Before))
        theirs = relax.transform.FoldConstant()(Before)
    tvm.ir.assert_structural_equal(ours, theirs)
