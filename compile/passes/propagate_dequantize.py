"""PropagateDequantize: per-tensor dequantize moved after the data-movement ops that follow it.

A QDQ model often moves a tensor between its ``DequantizeLinear`` and the convolution or matmul
that reads it: ppocr_rec's SVTR block and CTC head flatten, transpose and squeeze it, and concat
two tensors quantized alike. ``LowerQDQToInteger`` matches ``conv2d|matmul(dequantize(x_q), ...)``
only, so those layers stayed float (ppocr_rec: 5 of its 43 quantized layers, its CTC head the
slowest kernel of the int8 model at 11 % of the run). This pass rewrites

    reshape | permute_dims | squeeze | expand_dims(dequantize(x_q, s, z))
        -> dequantize(reshape | permute_dims | squeeze | expand_dims(x_q), s, z)
    concat(dequantize(a_q, s, z), dequantize(b_q, s, z), ...)
        -> dequantize(concat(a_q, b_q, ...), s, z)

until nothing matches, so the integer pattern sees the dequantize right before its consumer. Moved
only when the scale and the zero point are one value each (per tensor), and for ``concat`` when
every input is dequantized with the same scale, zero point and dtype (NNCF unifies the scales of
a concat's inputs). Data movement commutes with an elementwise map: the result is the same, bit
for bit. ONNX Runtime's QDQ propagation (``QDQPropagationTransformer``) moves ``DequantizeLinear``
through the same operators. The source dequantize stays where other consumers read it.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, is_tuple, wildcard

from ._mutate import rewrite_each_function

R = relax.op

#: Data-movement operators a per-tensor dequantize commutes with (one tensor input, first).
MOVES = ("relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims")
#: The most inputs of a concat this pass looks at.
MAX_CONCAT = 4


def _dequantize():
    return is_op("relax.dequantize")(wildcard(), is_const(), is_const())


def _per_tensor(dq: relax.Call) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, zero point) of a dequantize with one of each, else None."""
    scale, zero = dq.args[1].value.numpy(), dq.args[2].value.numpy()
    return (scale, zero) if scale.size == 1 and zero.size == 1 else None


def _moved(dq: relax.Call, data: relax.Expr) -> relax.Expr:
    """``dequantize(data)`` with ``dq``'s scale, zero point and output dtype."""
    return R.dequantize(data, dq.args[1], dq.args[2], axis=-1, out_dtype=str(dq.attrs.out_dtype))


class _Rewrites:
    def __init__(self) -> None:
        self.count = 0
        self.concat_op = tvm.ir.Op.get("relax.concat")
        self.move_dq = _dequantize()
        self.concat_dqs = [_dequantize() for _ in range(MAX_CONCAT)]
        # One pattern for both kinds: ``rewrite_call`` repeats until nothing matches, so a
        # dequantize moved past a concat moves on past the reshapes after it, and vice versa.
        alternatives = [is_op(name)(self.move_dq, *rest)
                        for name in MOVES for rest in ((), (wildcard(),))]
        alternatives += [is_op("relax.concat")(is_tuple(self.concat_dqs[:n]))
                         for n in range(2, MAX_CONCAT + 1)]
        self.pattern = alternatives[0]
        for alternative in alternatives[1:]:
            self.pattern = self.pattern | alternative

    def rewrite(self, call, m):
        if call.op.same_as(self.concat_op):
            return self.concat_all(call, m)
        return self.move_one(call, m)

    def move_one(self, call, m):
        dq = m[self.move_dq]
        if _per_tensor(dq) is None:
            return call
        self.count += 1
        data = relax.Call(call.op, [dq.args[0], *call.args[1:]], call.attrs, call.ty_args)
        return _moved(dq, data)

    def concat_all(self, call, m):
        dqs = [m[p] for p in self.concat_dqs if p in m]
        params = [_per_tensor(dq) for dq in dqs]
        if any(p is None for p in params):
            return call
        first = dqs[0]
        same = all(np.array_equal(p[0], params[0][0]) and np.array_equal(p[1], params[0][1])
                   and str(dq.args[0].ty.dtype) == str(first.args[0].ty.dtype)
                   and str(dq.attrs.out_dtype) == str(first.attrs.out_dtype)
                   for p, dq in zip(params, dqs, strict=True))
        if not same:
            return call
        self.count += 1
        return _moved(first, R.concat([dq.args[0] for dq in dqs], axis=call.attrs.axis))


@tvm.transform.module_pass(opt_level=0, name="PropagateDequantize")
class PropagateDequantize:
    """Move per-tensor dequantize after data-movement ops (see the module docstring).

    Run before ``LowerQDQToInteger``.

    Attributes
    ----------
    moved : int
        Dequantize ops moved past one operator by the last run (a concat counts once).
    """

    def __init__(self) -> None:
        self.moved = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        rewrites = _Rewrites()
        new = rewrite_each_function(
            mod, lambda func: relax.dpl.rewrite_call(rewrites.pattern, rewrites.rewrite, func))
        self.moved = rewrites.count
        return new
