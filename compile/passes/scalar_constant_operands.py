"""ScalarConstantOperands: one-element constants that would steer ``ConvertLayout`` made scalars.

TVM 0.27's ``ConvertLayout`` gives an elementwise binary operator the layout of one of its
operands (``InferLayoutBinaryEwise`` in ``src/relax/op/tensor/binary.cc``): the first one when
the ranks are equal or the first is lower, the second one when the second is lower, unless that
operand is a rank-0 scalar. A constant's layout is the initial one (NCHW), so ``Mul(c, x)`` with
``c`` of shape ``[1]`` or ``[1, 1, 1, 1]``, and ``Add(x, c)`` with ``c`` of shape ``[1]``, take an
NHWC ``x`` back to NCHW, with a transpose on each side. PaddlePaddle's ONNX exports write their
hardswish activations that way: in PP-OCRv4 rec (int8, NHWC) 17 kernels transposed and
transposed back, 3.16 ms of a 5.87 ms tuning estimate (2026-11-22).

This pass rewrites ``add``, ``subtract``, ``multiply``, ``divide``, ``maximum`` and ``minimum``
whose constant operand holds one element and has rank 1 or more, when that constant is

* the first operand and the other has at least its rank, or
* the second operand and the first has a higher rank,

into the same operator with the constant as a rank-0 scalar. The other operand's rank is at
least the constant's, so broadcasting gives the same shape and the same values, bit for bit.
Operands that keep the layout already (a constant second operand of the same rank) are left,
so models without such constants (MobileNetV2) get the same kernels as without this pass.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import _tvm
from ._mutate import rewrite_counted

_OPS = frozenset(f"relax.{name}" for name in
                 ("add", "subtract", "multiply", "divide", "maximum", "minimum"))


def _rank(expr) -> int:
    """The rank of a tensor-typed expression, -1 when unknown or not a tensor."""
    ty = expr.ty
    return int(ty.ndim) if isinstance(ty, _tvm.TensorType) and ty.ndim >= 0 else -1


def _scalar(expr) -> relax.Constant | None:
    """``expr`` as a rank-0 constant, if it is a constant of one element and rank >= 1."""
    if not isinstance(expr, _tvm.RelaxConstant):
        return None
    value = expr.value.numpy()
    if value.size != 1 or value.ndim == 0:
        return None
    return relax.const(np.reshape(value, ()), str(value.dtype))


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.count = 0

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        if not isinstance(call.op, tvm.ir.Op) or call.op.name not in _OPS:
            return call
        first, second = call.args
        rank_first, rank_second = _rank(first), _rank(second)
        if rank_first < 0 or rank_second < 0:
            return call
        if rank_second >= rank_first and (scalar := _scalar(first)) is not None:
            args = [scalar, second]
        elif rank_first > rank_second and (scalar := _scalar(second)) is not None:
            args = [first, scalar]
        else:
            return call
        self.count += 1
        return relax.Call(call.op, args, call.attrs)


@tvm.transform.module_pass(opt_level=0, name="ScalarConstantOperands")
class ScalarConstantOperands:
    """Make layout-steering one-element constant operands rank-0 scalars (module docstring).

    Run before ``ConvertLayout``, after ``FoldConstant`` (so computed constants are constants).

    Attributes
    ----------
    rewritten : int
        Operators rewritten by the last run.
    """

    def __init__(self) -> None:
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        new, self.rewritten = rewrite_counted(mod, _Rewriter(mod))
        return new
