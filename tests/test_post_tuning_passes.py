"""post_tuning_passes: the VM gets kernel calls with constant weights, not tuples to rebuild."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import tirx as T

from compile.pipeline import post_tuning_passes
from tests.conftest import compose


@T.prim_func(s_tir=True)
def _scale_add(x: T.Buffer((4,), "float32"), w: T.Buffer((4,), "float32"),
               b: T.Buffer((4,), "float32"), y: T.Buffer((4,), "float32")):
    for i in range(4):
        with T.sblock("y"):
            vi = T.axis.spatial(4, i)
            y[vi] = x[vi] * w[vi] + b[vi]


def _folded_module() -> tvm.IRModule:
    """What folding leaves of a layout-rewrite preprocess: a tuple of constants read by index."""
    bb = relax.BlockBuilder()
    kernel = bb.add_func(_scale_add, "scale_add")
    x = relax.Var("x", relax.TensorType((4,), "float32"))
    weights = relax.Tuple([relax.const(np.full(4, 2, "float32")),
                           relax.const(np.arange(4, dtype="float32"))])
    with bb.function("main", [x]):
        with bb.dataflow():
            packed = bb.emit(weights)
            w = bb.emit(relax.TupleGetItem(packed, 0))
            b = bb.emit(relax.TupleGetItem(packed, 1))
            y = bb.emit_output(relax.call_tir(kernel, [x, w, b],
                                              relax.TensorType((4,), "float32")))
        bb.emit_func_output(y)
    return bb.get()


def test_constant_weight_tuples_are_not_rebuilt_at_every_run():
    cfg = compose("model=mobilenet_v2").target
    target = tvm.target.Target({"kind": "llvm"})
    before = _folded_module()
    with target:
        after = post_tuning_passes(cfg)(before)
    executables = [tvm.compile(mod, target) for mod in (before, after)]
    texts = [ex.mod["as_text"]() for ex in executables]
    assert "vm.builtin.tuple_getitem" in texts[0]  # the shape folding leaves, as the VM runs it
    assert "vm.builtin.make_tuple" not in texts[1]
    assert "vm.builtin.tuple_getitem" not in texts[1]
    x = np.array([1, 2, 3, 4], "float32")
    for executable in executables:
        vm = relax.VirtualMachine(executable, tvm.cpu())
        y = vm["main"](tvm.runtime.tensor(x)).numpy()
        np.testing.assert_array_equal(y, x * 2 + np.arange(4))
