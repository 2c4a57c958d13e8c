"""ClipToMaxMin: the ONNX importer's Clip as Relax ``maximum``/``minimum`` operators.

TVM 0.27's ONNX importer emits ``Clip(x, lo, hi)`` (ReLU6 in MobileNets) as two ``call_tir``
of TE ``maximum``/``minimum`` PrimFuncs. Relax passes that reason about operators cannot see
through a ``call_tir``: ``ConvertLayout`` puts a layout transform on each side of it, so an NHWC
model would go back to NCHW at every ReLU6. This pass rewrites

    call_tir(maximum*, (x, c)) -> relax.maximum(x, reshape(c, (1,) * ndim(x)))
    call_tir(minimum*, (x, c)) -> relax.minimum(x, reshape(c, (1,) * ndim(x)))

where ``c`` is a one-element constant of ``x``'s dtype (run ``FoldConstant`` first: the importer
computes the bounds with ``where(isnan(c), ±inf, c)``). The constant gets ``x``'s rank so
``ConvertLayout`` can permute it like any broadcast operand. The result is the same
elementwise maximum/minimum, bit for bit; anything else is left as is.

With ``prim_bounds=True`` it also rewrites Relax's own ``clip`` (the importer's ``HardSigmoid``
and ``HardSwish``, e.g. in PP-OCRv4):

    relax.clip(x, R.prim_value(lo), R.prim_value(hi)) -> minimum(maximum(x, lo), hi)

with ``lo``/``hi`` one-element constants of ``x``'s dtype and rank. TVM 0.27's
``ToMixedPrecision`` fails on ``clip`` ("Expected TensorType, but got T.int64": it types every
argument as a tensor), so the ``fp16`` pipeline needs it; the CPU pipelines leave ``clip`` as is
(their tuned kernels were recorded with it).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import _tvm
from ._mutate import rewrite_counted

_FUNCS = {"maximum": relax.op.maximum, "minimum": relax.op.minimum}


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, prim_bounds: bool) -> None:
        super().__init__(mod)
        self.call_tir = tvm.ir.Op.get("relax.call_tir")
        self.clip = tvm.ir.Op.get("relax.clip") if prim_bounds else None
        self.count = 0

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        if self.clip is not None and call.op.same_as(self.clip):
            return self._clip(call)
        if not call.op.same_as(self.call_tir) or len(call.args) != 2:
            return call  # call_tir(func, args) only, no symbolic-shape argument
        op = next((f for name, f in _FUNCS.items()
                   if call.args[0].name_hint.startswith(name)), None)
        args = getattr(call.args[1], "fields", [])
        if op is None or len(args) != 2:
            return call
        x, bound = args
        x_type = x.ty
        if not (isinstance(bound, _tvm.RelaxConstant) and isinstance(x_type, _tvm.TensorType)
                and x_type.ndim >= 0 and getattr(call.ty, "ndim", None) == x_type.ndim):
            return call  # elementwise with a scalar: the result has x's rank
        value = bound.value.numpy()
        if value.size != 1 or str(value.dtype) != str(x_type.dtype):
            return call
        self.count += 1
        return op(x, relax.const(np.reshape(value, (1,) * x_type.ndim), str(value.dtype)))

    def _clip(self, call):
        x, lo, hi = call.args
        x_type = x.ty
        if not (isinstance(x_type, _tvm.TensorType) and x_type.ndim >= 0 and x_type.dtype
                and all(isinstance(b, _tvm.PrimImm) for b in (lo, hi))):
            return call  # symbolic bounds or rank: left as is

        def bound(b):
            return relax.const(np.full((1,) * x_type.ndim, b.value, str(x_type.dtype)))

        self.count += 2
        return relax.op.minimum(relax.op.maximum(x, bound(lo)), bound(hi))


@tvm.transform.module_pass(opt_level=0, name="ClipToMaxMin")
class ClipToMaxMin:
    """Rewrite imported Clip bounds (``call_tir`` of TE maximum/minimum) into Relax operators.

    See the module docstring. Run ``FoldConstant`` before and ``DeadCodeElimination`` after
    (the replaced PrimFuncs stay in the module until then).

    Attributes
    ----------
    rewritten : int
        ``maximum``/``minimum`` calls rewritten by the last run.
    """

    def __init__(self, prim_bounds: bool = False) -> None:
        self.prim_bounds = prim_bounds
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        new, self.rewritten = rewrite_counted(mod, _Rewriter(mod, self.prim_bounds))
        return new
