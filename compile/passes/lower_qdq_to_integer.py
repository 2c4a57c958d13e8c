"""LowerQDQToInteger: quantized convolutions and matmuls computed in integers.

ONNX QDQ models import into Relax as float compute between ``dequantize`` and ``quantize``
(fake quantization: no integer arithmetic, ../shared/TVM_0_27.md). This pass rewrites

    quantize(act(conv2d|matmul(dequantize(x_q), dequantize(W_q)) [+ dequantize(b_q)]), s_y, z_y)

where ``act`` is nothing, ReLU, ReLU6/Clip or max/min with constants (run ``PropagateDequantize``
first: it moves ``dequantize(x_q)`` past the reshapes, transposes and concats between it and the
op, as the flatten before a Gemm), into

    y_q = clip(round(float(conv2d|matmul(x_q, W_q, out_dtype=int32) + c) * m) + z_y, lo, hi)

with uint8/int8 (or 16-bit, zero point 0) inputs and int8 weights, int32 accumulation, and the
requantization (per-channel multiplier ``m = s_x * s_w / s_y``, the folded constant
``c = b_q - z_x * sum(W_q)``, the activation as integer bounds ``lo, hi``) in the same kernel
after fusion. Quantized tensors stay integers between such ops; everything else (pooling,
residual adds, sigmoid, ...) keeps its float dequantize → op → quantize form.

Exactness: the integer sum is exact; the float32 epilogue is exact while |acc| < 2**24 and rounds
half to even like ONNX ``QuantizeLinear``, so results match ONNX Runtime's QDQ evaluation within
one quantization step (ties and float rounding of the reference). With 16-bit inputs
(``quant.activation_type=int16``, TensorFlow Lite's 16x8 scheme) the products reach 2**22, so
the int32 sum can wrap when hundreds of full-scale inputs meet same-signed weights; the compile
job's verification against ONNX Runtime would catch that (ppocr_rec with ranges 4x the
calibrated ones: max abs error 0.0015, against 0.105 with 8-bit inputs).

For NHWC pipelines (``LowerQDQToInteger(layout_convertible=True)``, before ``ConvertLayout``)
the pass emits only operators that have layout rules, so the layout flows through them: no
packed 1×1 form (``PackPointwiseNHWC`` packs channels-last ones after the conversion), a padded
input with a nonzero zero point centred in int16 (``int16(x) - z``, zero-padded by the
convolution) instead of ``pad``, a per-channel input (depthwise) whose zero points are one value
left uint8/int8 instead of centred, and ``maximum``/``minimum`` with constants of the
accumulator's rank instead of ``clip``. The integer results are the same.

Matched only when weights are constant and symmetric (zero point 0), activation scales and zero
points are constants (per tensor; per channel for the input of a depthwise convolution, centred
in int16, and for outputs), and convolutions are 2-D NCHW/OIHW; anything else is left as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from ._mutate import rewrite_each_function
from .pointwise_int8 import PointwisePacker

R = relax.op


@dataclass
class _Patterns:
    x: object = field(default_factory=wildcard)
    w: object = field(default_factory=is_const)
    b: object = field(default_factory=is_const)

    def __post_init__(self) -> None:
        dq = lambda data: is_op("relax.dequantize")(data, is_const(), is_const())  # noqa: E731
        self.dq_x, self.dq_w, self.dq_b = dq(self.x), dq(self.w), dq(self.b)
        self.conv = is_op("relax.nn.conv2d")(self.dq_x, self.dq_w)
        self.matmul = is_op("relax.matmul")(self.dq_x, self.dq_w)
        self.w_t = is_op("relax.permute_dims")(self.dq_w)
        self.matmul_t = is_op("relax.matmul")(self.dq_x, self.w_t)
        core = self.conv | self.matmul | self.matmul_t
        self.core = core
        self.float_b = is_const()  # float bias (NNCF leaves biases float)
        bias = self.dq_b | self.float_b
        self.add = is_op("relax.add")(core, is_op("relax.reshape")(bias, wildcard()) | bias)
        pre = self.add | core
        self.relu = is_op("relax.nn.relu")(pre)
        self.max_c, self.min_c = is_const(), is_const()
        self.maximum = is_op("relax.maximum")(pre, self.max_c)
        self.minimum = is_op("relax.minimum")(pre | self.maximum, self.min_c)
        self.clip = is_op("relax.clip")(pre, wildcard(), wildcard())
        act = self.minimum | self.maximum | self.relu | self.clip | pre
        self.sy, self.zy = is_const(), is_const()
        self.out = is_op("relax.quantize")(act, self.sy, self.zy)


def _np(expr) -> np.ndarray:
    """The value of a Relax constant (``relax.const`` is ``tvm.ir.GenericConst`` in 0.27)."""
    return expr.value.numpy()


def _cut(value, width: int | None):
    """Cut a packed convolution's padded rows (last axis) back to ``width`` pixels."""
    return value if width is None else R.strided_slice(value, axes=[3], begin=[0], end=[width])


def _dtype_range(dtype: str) -> tuple[int, int]:
    info = np.iinfo(np.dtype(dtype))
    return int(info.min), int(info.max)


@tvm.transform.module_pass(opt_level=0, name="LowerQDQToInteger")
class LowerQDQToInteger:
    """Rewrite quantized conv2d/matmul patterns into integer compute (see the module docstring).

    Attributes
    ----------
    rewritten : list of str
        ``"conv2d"`` / ``"matmul"`` for each pattern rewritten by the last run.
    intrinsic : str or None
        The x86 dot intrinsic of the last run's target (``compile.intrinsics.dot_intrinsic``).
    packed, saturating : int
        1×1 convolutions computed with it (``compile.passes.pointwise_int8``), and those left
        as conv2d because their weights could saturate ``vpmaddubsw``.

    Parameters
    ----------
    layout_convertible : bool
        Emit only operators ``ConvertLayout`` has rules for (see the module docstring).
    """

    def __init__(self, layout_convertible: bool = False) -> None:
        self.layout_convertible = layout_convertible
        self.rewritten: list[str] = []
        self.intrinsic: str | None = None
        self.packed = self.saturating = 0
        self._packer: PointwisePacker | None = None

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module."""
        self.rewritten = []
        patterns = _Patterns()
        builder = relax.BlockBuilder(mod)  # the packed convolutions' PrimFuncs go here
        self._packer = PointwisePacker(builder)

        def rewrite(func: relax.Function) -> relax.Function:
            # Requantized outputs first; then integer ops whose output stays float.
            func = relax.dpl.rewrite_call(
                patterns.out, lambda c, m: self._requantized(c, m, patterns), func)
            return relax.dpl.rewrite_call(
                patterns.core, lambda c, m: self._dequantized(c, m, patterns), func)

        new = rewrite_each_function(mod, rewrite, base=builder.get)
        self.intrinsic = None if self.layout_convertible else self._packer.intrinsic
        self.packed, self.saturating = self._packer.packed, self._packer.saturating
        return new

    def _requantized(self, call, m, p: _Patterns):
        core = self._integer_core(m, p)
        if core is None:
            return call
        sy, zy = _np(m[p.sy]).astype(np.float64), _np(m[p.zy]).astype(np.float64)
        out_dtype = str(call.attrs.out_dtype)
        acc, acc_scale, offset, shape, width = core
        if sy.shape != zy.shape or sy.size not in (1, acc_scale.shape[0]):
            return call
        self.rewritten.append(m[p.core].op.name.split(".")[-1])
        offset = offset + self._bias(m, p, acc_scale)
        acc = R.add(acc, relax.const(offset.astype(np.int32).reshape(shape)))
        return _cut(self._requantize(acc, m, p, acc_scale, sy, zy, out_dtype, shape), width)

    def _dequantized(self, call, m, p: _Patterns):
        """An integer conv2d/matmul whose consumer is float: dequantize the accumulator."""
        core = self._integer_core(m, p)
        if core is None:
            return call
        acc, acc_scale, offset, shape, width = core
        self.rewritten.append(call.op.name.split(".")[-1])
        acc = R.add(acc, relax.const(offset.astype(np.int32).reshape(shape)))
        return _cut(R.multiply(R.astype(acc, "float32"),
                               relax.const(acc_scale.astype(np.float32).reshape(shape))), width)

    def _integer_core(self, m, p: _Patterns):
        """The integer conv2d/matmul of a match.

        Returns (int32 acc, s_x * s_w, zero-point offset, shape of per-channel constants, width
        to cut the result to after the epilogue or None); None when the match cannot be
        computed in integers.
        """
        dq_x, dq_w = m[p.dq_x], m[p.dq_w]
        sx, zx = _np(dq_x.args[1]).astype(np.float64), _np(dq_x.args[2]).astype(np.float64)
        w_q, s_w, z_w = _np(m[p.w]), _np(dq_w.args[1]), _np(dq_w.args[2])
        x_dtype = str(m[p.x].ty.dtype) if hasattr(m[p.x].ty, "dtype") else ""
        if (np.any(z_w != 0) or w_q.dtype != np.int8 or sx.shape != zx.shape
                or x_dtype not in ("uint8", "int8", "int16", "uint16")
                or (x_dtype.endswith("16") and np.any(zx != 0))):
            return None
        if p.conv in m:
            return self._conv(m, p, sx, zx, w_q, s_w)
        if sx.size != 1:  # a per-channel input scale does not factor out of a matmul's sum
            return None
        weights = w_q.T if p.w_t in m else w_q  # to [K, N]
        if weights.ndim != 2:
            return None
        axis = int(dq_w.attrs.axis) % w_q.ndim if s_w.size > 1 else None
        n_axis = 0 if p.w_t in m else 1  # the output-feature axis of the stored weight
        if axis is not None and axis != n_axis:
            return None
        channels = weights.shape[1]
        scale_w = np.broadcast_to(s_w.reshape(-1).astype(np.float64), (channels,))
        acc = R.matmul(m[p.x], relax.const(np.ascontiguousarray(weights)), out_dtype="int32")
        offset = -np.round(zx.reshape(-1)[0]) * weights.astype(np.int64).sum(axis=0)
        return acc, sx.reshape(-1)[0] * scale_w, offset, (channels,), None

    def _conv(self, m, p, sx, zx, w_q, s_w):
        conv = m[p.conv]
        attrs = conv.attrs
        if (str(attrs.data_layout) != "NCHW" or str(attrs.kernel_layout) != "OIHW"
                or w_q.ndim != 4):
            return None
        out_ch, groups = w_q.shape[0], int(attrs.groups)
        in_ch = w_q.shape[1] * groups
        depthwise = groups == in_ch == out_ch
        if s_w.size > 1 and int(m[p.dq_w].attrs.axis) % 4 != 0:
            return None
        if sx.size != 1 and not (depthwise and sx.size == in_ch):
            return None  # per-channel input scales factor out of depthwise convolutions only
        scale_w = np.broadcast_to(s_w.reshape(-1).astype(np.float64), (out_ch,))
        data, padding = m[p.x], [int(v) for v in attrs.padding]
        sums = w_q.astype(np.int64).sum(axis=(1, 2, 3))
        z = float(np.round(zx.reshape(-1)[0]))
        # Per-channel zero points, and for ConvertLayout (no rule for pad) a padded input with a
        # nonzero zero point: centre the input in int16 (exact), zero-padded as usual. The NCHW
        # form also centres every per-channel input (its tuned databases have that form); the
        # NHWC form keeps uint8/int8 data when the per-channel zero points are one value.
        mixed = (sx.size != 1 if not self.layout_convertible
                 else bool(np.any(zx != zx.reshape(-1)[0])))
        centred = mixed or (z != 0 and any(padding) and self.layout_convertible)
        if centred:
            centre = relax.const(np.round(zx).astype(np.int16).reshape(1, -1, 1, 1))
            data = R.subtract(R.astype(data, "int16"), centre)
            offset = np.zeros(out_ch)
        else:
            if z != 0 and any(padding):
                # Float zero pads are the zero point in the quantized domain: pad explicitly.
                top, left, bottom, right = padding
                data = R.nn.pad(data, [0, 0, 0, 0, top, bottom, left, right], "constant", z)
                padding = [0, 0, 0, 0]
            offset = -z * sums
        scale_x = np.broadcast_to(sx.reshape(-1), (out_ch,))
        packed = (None if centred or self.layout_convertible
                  else self._packer.conv(data, attrs, w_q))
        if packed is not None:
            acc, shift, width = packed
            return acc, scale_x * scale_w, offset + shift, (1, out_ch, 1, 1), width
        acc = R.nn.conv2d(data, relax.const(w_q), strides=[int(v) for v in attrs.strides],
                          padding=padding, dilation=[int(v) for v in attrs.dilation],
                          groups=groups, data_layout="NCHW", kernel_layout="OIHW",
                          out_dtype="int32")
        return acc, scale_x * scale_w, offset, (1, out_ch, 1, 1), None

    @staticmethod
    def _bias(m, p, acc_scale):
        """The bias in accumulator units (int32 values), zeros without a bias."""
        channels = acc_scale.shape[0]
        if p.dq_b in m:
            dq_b = m[p.dq_b]
            b_q, s_b = _np(m[p.b]).astype(np.float64), _np(dq_b.args[1]).astype(np.float64)
            z_b = _np(dq_b.args[2]).astype(np.float64)
            return np.round(np.broadcast_to((b_q - z_b) * s_b, (channels,)) / acc_scale)
        if p.float_b in m:
            bias = _np(m[p.float_b]).astype(np.float64).reshape(-1)
            return np.round(np.broadcast_to(bias, (channels,)) / acc_scale)
        return np.zeros(channels)

    def _requantize(self, acc, m, p, acc_scale, sy, zy, out_dtype, shape):
        """int32 accumulator -> uint8/int8 with the output's scale and zero point."""
        channels = acc_scale.shape[0]
        sy_c = np.broadcast_to(sy.reshape(-1), (channels,))
        zy_c = np.broadcast_to(np.round(zy.reshape(-1)), (channels,))
        multiplier = (acc_scale / sy_c).astype(np.float32).reshape(shape)
        value = R.round(R.multiply(R.astype(acc, "float32"), relax.const(multiplier)))
        lo, hi = self._activation_bounds(m, p, sy_c, zy_c, *_dtype_range(out_dtype))
        if zy.size == 1 and not self.layout_convertible:
            value = R.add(value, relax.const(np.float32(zy_c[0])))
            value = R.clip(value, int(lo.max()), int(hi.min()))
        else:
            value = R.add(value, relax.const(zy_c.astype(np.float32).reshape(shape)))
            value = R.minimum(R.maximum(value, relax.const(lo.astype(np.float32).reshape(shape))),
                              relax.const(hi.astype(np.float32).reshape(shape)))
        return R.astype(value, out_dtype)

    @staticmethod
    def _activation_bounds(m, p, sy, zy, qmin, qmax):
        """Per-channel integer bounds: the dtype's range narrowed by ReLU/Clip/max/min."""
        lo = np.full(sy.shape, float(qmin))
        hi = np.full(sy.shape, float(qmax))

        def q(v):
            return np.round(v / sy) + zy

        if p.relu in m:
            lo = np.maximum(lo, q(0.0))
        if p.maximum in m and _np(m[p.max_c]).size == 1:
            lo = np.maximum(lo, q(float(_np(m[p.max_c]).reshape(-1)[0])))
        if p.minimum in m and _np(m[p.min_c]).size == 1:
            hi = np.minimum(hi, q(float(_np(m[p.min_c]).reshape(-1)[0])))
        if p.clip in m:
            clip = m[p.clip]
            lo = np.maximum(lo, q(float(clip.args[1].value)))
            hi = np.minimum(hi, q(float(clip.args[2].value)))
        return lo, hi
