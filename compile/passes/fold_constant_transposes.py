"""FoldConstantTransposes: ``permute_dims`` of a constant replaced by the permuted constant.

``ConvertLayout`` turns every weight and every broadcast constant of an NHWC pipeline into
``permute_dims(constant)``. TVM's ``FoldConstant`` folds each by building a kernel for it with
LLVM and running it: in the 16-bit mobilenet_v2 (int8 weights, NHWC) 538 of them took 13.4 of
the 17.2 s of its preparation passes (``tvm.ir.instrument.PassTimingInstrument``, Intel Xeon,
2026-11-24). A transpose moves values without computing any, so numpy's gives the same constant,
bit for bit, in milliseconds; ``FoldConstant`` then has nothing of the kind left to build.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import _tvm
from ._mutate import rewrite_counted


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.permute_dims = tvm.ir.Op.get("relax.permute_dims")
        self.count = 0

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        if not call.op.same_as(self.permute_dims) or not isinstance(call.args[0],
                                                                    _tvm.RelaxConstant):
            return call
        value = call.args[0].value.numpy()
        axes = call.attrs.axes
        order = None if axes is None else [int(a) for a in axes]
        self.count += 1
        permuted = np.ascontiguousarray(np.transpose(value, order))
        return relax.const(permuted, str(value.dtype))


@tvm.transform.module_pass(opt_level=0, name="FoldConstantTransposes")
class FoldConstantTransposes:
    """Replace ``permute_dims`` of constants by the permuted constants (module docstring).

    Attributes
    ----------
    rewritten : int
        Transposes folded by the last run.
    """

    def __init__(self) -> None:
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        new, self.rewritten = rewrite_counted(mod, _Rewriter(mod))
        return new
