"""DecomposeQDQ: quantize/dequantize with constant parameters as elementwise operators.

``relax.quantize`` and ``relax.dequantize`` have no layout rule in TVM 0.27: ``ConvertLayout``
puts a transpose on each side of them, so the float islands of a quantized model (residual
adds, pooling, the model's input) would go back to NCHW in an NHWC pipeline. With constant
scale and zero point they are elementwise, and this pass writes them as the
operators TVM's own legalization computes (``python/tvm/relax/transform/legalize_ops/qdq.py``),
in the same order, so the result is bit-identical:

    dequantize(x, s, z)      -> float32(int32(x) - z) * s
    quantize(x, s, z, dtype) -> dtype(maximum(minimum(round(x / s) + z, dtype max), dtype min))

with ``s`` and ``z`` per tensor or per channel (along the op's ``axis``). The constants get
``x``'s rank (shape ``(1, …, 1)``, or ``(1, C, 1, 1)`` per channel along axis 1), so
``ConvertLayout`` permutes them like any broadcast operand. Non-constant parameters, unknown
shapes and dequantize to other dtypes than float32 are left as they are.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import _tvm
from ._mutate import rewrite_counted

R = relax.op


def _param(expr, shape: tuple[int, ...]) -> np.ndarray | None:
    """A scale/zero-point constant shaped for broadcasting (``shape``), else None."""
    if not isinstance(expr, _tvm.RelaxConstant):
        return None
    value = expr.value.numpy()
    if value.size == 1:
        return np.full(shape, value.reshape(-1)[0], value.dtype)
    if value.size != int(np.prod(shape)):
        return None
    return value.reshape(shape)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.quantize = tvm.ir.Op.get("relax.quantize")
        self.dequantize = tvm.ir.Op.get("relax.dequantize")
        self.count = 0

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        is_q, is_dq = call.op.same_as(self.quantize), call.op.same_as(self.dequantize)
        if not (is_q or is_dq):
            return call
        x, scale, zero = call.args
        x_type = x.ty
        dims = getattr(getattr(x_type, "shape", None), "values", None)
        if not isinstance(x_type, _tvm.TensorType) or dims is None:
            return call
        axis = int(call.attrs.axis) % len(dims)
        channel = dims[axis]
        if not isinstance(channel, tvm.tirx.IntImm):
            return call
        shape = tuple(int(channel) if i == axis else 1 for i in range(len(dims)))
        s, z = _param(scale, shape), _param(zero, shape)
        if s is None or z is None:
            return call
        out_dtype = str(call.attrs.out_dtype)
        if is_dq:
            if out_dtype != "float32" or "int" not in str(x_type.dtype):
                return call
            self.count += 1
            centred = R.subtract(R.astype(x, "int32"), relax.const(z.astype(np.int32)))
            return R.multiply(R.astype(centred, "float32"), relax.const(s.astype(np.float32)))
        if str(x_type.dtype) != "float32" or out_dtype not in ("uint8", "int8", "int16", "uint16"):
            return call
        self.count += 1
        info = np.iinfo(np.dtype(out_dtype))
        shape = (1,) * len(dims)
        value = R.add(R.round(R.divide(x, relax.const(s.astype(np.float32)))),
                      relax.const(z.astype(np.float32)))
        value = R.maximum(R.minimum(value, relax.const(np.full(shape, info.max, np.float32))),
                          relax.const(np.full(shape, info.min, np.float32)))
        return R.astype(value, out_dtype)


@tvm.transform.module_pass(opt_level=0, name="DecomposeQDQ")
class DecomposeQDQ:
    """Write quantize/dequantize as elementwise operators (see the module docstring).

    Attributes
    ----------
    rewritten : int
        quantize/dequantize calls rewritten by the last run.
    """

    def __init__(self) -> None:
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        new, self.rewritten = rewrite_counted(mod, _Rewriter(mod))
        return new
