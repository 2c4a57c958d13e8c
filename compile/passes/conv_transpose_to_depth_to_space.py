"""ConvTransposeToDepthToSpace: stride-equals-kernel transposed convolutions made 1x1 convolutions.

A transposed convolution whose stride is its kernel size becomes a 1x1 convolution followed by
depth-to-space.

With stride equal to the kernel size ``(kh, kw)`` and no padding, output padding or dilation, the
windows of a transposed convolution do not overlap: each input pixel writes its own
``kh x kw`` block of the output,

    out[n, o, h*kh + i, w*kw + j] = sum_c x[n, c, h, w] * W[c, o, i, j]        (W: IOHW)

which is a 1x1 convolution to ``O*kh*kw`` channels, ``y[n, (o, i, j), h, w]``, whose channels are
then moved into space (ONNX ``DepthToSpace`` in CRD order: reshape to ``[N, O, kh, kw, H, W]``,
transpose to ``[N, O, H, kh, W, kw]``, reshape to ``[N, O, H*kh, W*kw]``).

TVM 0.27 legalizes ``conv2d_transpose`` as a direct convolution over the zero-dilated input
(``topi.nn.conv2d_transpose_nchw``): ``kh*kw`` times the multiply-adds at these strides, three in
four of them on inserted zeros at stride 2. ppocr_det's two (kernel 2, stride 2, the FPN head's
upsampling) were a quarter of its tuned time on an AMD EPYC Zen 5 (3.40 and 1.98 of 21.46 ms,
2026-11-24). Rewritten and tuned there, their four kernels take 0.79 ms (1x1 convolutions 281
and 70 us, depth-to-space with bias and activation 361 and 81 us), and ppocr_det's estimate
went from 21.46 to 16.87 ms (README, "ppocr_det's transposed convolutions"). Grouped transposed
convolutions and other layouts are left as they are.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from .. import _tvm
from ._mutate import rewrite_counted
from ._shapes import static_shape


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _rewritable(call: relax.Call) -> tuple[int, int] | None:
    """The kernel size ``(kh, kw)`` of a transposed convolution this pass rewrites, else None."""
    attrs = call.attrs
    weight = static_shape(call.args[1].ty)
    if (attrs.data_layout != "NCHW" or attrs.kernel_layout != "IOHW"
            or attrs.out_layout != "NCHW" or int(attrs.groups) != 1
            or weight is None or static_shape(call.args[0].ty) is None):
        return None
    kernel = list(weight[2:])
    if (_ints(attrs.strides) != kernel or any(_ints(attrs.padding))
            or any(_ints(attrs.output_padding)) or _ints(attrs.dilation) != [1, 1]):
        return None
    return kernel[0], kernel[1]


def _pointwise_weight(weight: relax.Expr, kh: int, kw: int) -> relax.Expr:
    """IOHW ``[C, O, kh, kw]`` -> OIHW ``[O*kh*kw, C, 1, 1]``, output channel ``(o, i, j)``.

    A constant is rearranged with numpy (bit for bit); any other weight (e.g. a dequantize)
    with ``permute_dims`` and ``reshape``.
    """
    if isinstance(weight, _tvm.RelaxConstant):
        value = weight.value.numpy()
        c, o = value.shape[:2]
        moved = np.ascontiguousarray(value.transpose(1, 2, 3, 0).reshape(o * kh * kw, c, 1, 1))
        return relax.const(moved, str(value.dtype))
    c, o = static_shape(weight.ty)[:2]
    return relax.op.reshape(relax.op.permute_dims(weight, [1, 2, 3, 0]), [o * kh * kw, c, 1, 1])


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule) -> None:
        super().__init__(mod)
        self.conv2d_transpose = tvm.ir.Op.get("relax.nn.conv2d_transpose")
        self.count = 0

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        if not call.op.same_as(self.conv2d_transpose) or (kernel := _rewritable(call)) is None:
            return call
        kh, kw = kernel
        data, weight = call.args
        n, _, h, w = static_shape(data.ty)
        o = static_shape(weight.ty)[1]
        out_dtype = call.attrs.out_dtype or None
        y = self.builder_.emit(relax.op.nn.conv2d(
            data, _pointwise_weight(weight, kh, kw), out_dtype=out_dtype))
        y = self.builder_.emit(relax.op.reshape(y, [n, o, kh, kw, h, w]))
        y = self.builder_.emit(relax.op.permute_dims(y, [0, 1, 4, 2, 5, 3]))
        self.count += 1
        return relax.op.reshape(y, [n, o, h * kh, w * kw])


@tvm.transform.module_pass(opt_level=0, name="ConvTransposeToDepthToSpace")
class ConvTransposeToDepthToSpace:
    """Rewrite stride-equals-kernel transposed convolutions (module docstring).

    Only ``conv2d_transpose`` in NCHW/IOHW with groups 1, strides equal to the kernel size and
    no padding, output padding or dilation; others are kept.

    Attributes
    ----------
    rewritten : int
        Transposed convolutions rewritten by the last run.
    """

    def __init__(self) -> None:
        self.rewritten = 0

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        new, self.rewritten = rewrite_counted(mod, _Rewriter(mod))
        return new
