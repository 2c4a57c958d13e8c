"""FoldConstantElementwise: elementwise operators of constants replaced by their results.

TVM's ONNX importer writes every ``Clip`` bound as ``where(isnan(b), ∓inf, b)``, constants
only. TVM's ``FoldConstant`` folds such an expression by legalizing each operator, building
the kernel with LLVM and running it: ppocr_det (float32, NCHW) has 48 Clips, and
``FoldConstant`` took 3.4 of the 3.7 s of its preparation passes
(``tvm.ir.instrument.PassTimingInstrument``, Intel Xeon, 2026-11-24). numpy computes the same
values: ``isnan``, ``isinf``, ``isfinite`` and ``where`` are exact, and IEEE 754 rounds the
float ``+ - * /`` and ``sqrt`` of numpy and of LLVM's code alike (TVM builds folded kernels
without fast-math). Only float operands are folded (integer division and overflow differ
between numpy and TVM), ``maximum``/``minimum`` only without NaN (which of two NaNs survives
differs), and only where numpy's result has the dtype and shape Relax inferred.

A variable bound to a constant is replaced by the constant in the calls that use it, as
``FoldConstant`` leaves them, so chains fold in one pass and the later passes see the same
module: with this pass before them, the prepared modules of ppocr_det, ppocr_cls, ppocr_rec and
mobilenet_v2 in the four CPU pipelines (float32 and int8, NCHW and NHWC) are structurally the
same as without it, and their preparation passes take 1.4-2.0 s instead of 3.2-5.0 s (float32;
int8, which had fewer, 0.1-0.2 s less).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import _tvm
from ._mutate import rewrite_counted

_EXACT = {
    "relax.isnan": np.isnan, "relax.isinf": np.isinf, "relax.isfinite": np.isfinite,
    "relax.where": np.where, "relax.add": np.add, "relax.subtract": np.subtract,
    "relax.multiply": np.multiply, "relax.divide": np.divide, "relax.sqrt": np.sqrt,
    "relax.negative": np.negative, "relax.maximum": np.maximum, "relax.minimum": np.minimum,
}
_NAN_SENSITIVE = {"relax.maximum", "relax.minimum"}


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.ops = {tvm.ir.Op.get(name): (name, fn) for name, fn in _EXACT.items()}
        self.count = 0

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        args = [self._constant(a) for a in call.args]
        if any(a is None for a in args):
            if any(a is not None and not isinstance(b, _tvm.RelaxConstant)
                   for a, b in zip(args, call.args, strict=True)):
                # a variable bound to a constant: use the constant, as FoldConstant leaves it
                return relax.Call(call.op, [a if a is not None else b for a, b in
                                            zip(args, call.args, strict=True)],
                                  call.attrs, call.ty_args)
            return call
        entry = self.ops.get(call.op) if isinstance(call.op, tvm.ir.Op) else None
        if entry is None:
            return call
        name, fn = entry
        values = [a.value.numpy() for a in args]
        floats = [v for v in values if v.dtype.kind == "f"]
        if name == "relax.where":
            floats = values[1:]
        if not floats or any(v.dtype.kind != "f" for v in floats):
            return call
        if name in _NAN_SENSITIVE and any(np.isnan(v).any() for v in values):
            return call
        with np.errstate(all="ignore"):  # inf and NaN are results like any other
            result = np.asarray(fn(*values))
        ty = call.ty
        if (not isinstance(ty, relax.TensorType) or str(result.dtype) != str(ty.dtype)
                or ty.shape is None
                or list(result.shape) != [int(d) for d in ty.shape.values]):
            return call
        self.count += 1
        return relax.const(result, str(result.dtype))

    def _constant(self, expr):
        if isinstance(expr, _tvm.RelaxConstant):
            return expr
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            if isinstance(bound, _tvm.RelaxConstant):
                return bound
        return None


@tvm.transform.module_pass(opt_level=0, name="FoldConstantElementwise")
class FoldConstantElementwise:
    """Replace elementwise operators of constants by their values (module docstring).

    Attributes
    ----------
    rewritten : int
        Operators folded by the last run.
    """

    def __init__(self) -> None:
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        new, self.rewritten = rewrite_counted(mod, _Rewriter(mod))
        return new
