"""PackPointwiseNHWC: channels-last convolutions and matmuls on x86 dot intrinsics.

In NHWC, the input channels of one pixel are adjacent bytes: a 1×1 convolution is a dense
product ``acc[n, h, w, o] = sum_c x[n, h, w, c] * W[o, c]`` whose 4 reduction elements per
intrinsic call (one pixel's 4 channels, broadcast) need no packing of the data. Only the
constant weights are packed, at compile time, as ``Wp[o // L, c // 4, o % L, c % 4]`` (L = 8
or 16 output channels × 4 input channels, 32 or 64 adjacent bytes: TVM's ``dense_vnni`` layout
with L lanes). L is 16 on targets with AVX-512 VNNI where O is a multiple of 16, else 8
(:func:`compile.intrinsics.channel_intrinsics`). This pass rewrites

    conv2d(x: uint8 [n, H, W, C], W: int8 const [O, 1, 1, C], NHWC/OHWI, out_dtype=int32)

into ``call_tir(int8_pointwise_nhwc_dot…, (x, Wp))`` (``int8_pointwise_nhwc_dot16…`` for 16
lanes), whose L × 4 inner tile is the target's channel dot intrinsic of that width (the
tuning job tensorizes it). An integer matmul with constant weights (a quantized Gemm or
classifier head, as ``LowerQDQToInteger`` emits it) is the same product, its rows taken as the
pixels of one image row,

    matmul(x: uint8 or int8 [..., M, K], W: int8 const [K, N], out_dtype=int32)
        -> reshape(dot(reshape(x, [1, 1, rows, K]), Wp), [..., M, N])

(no reshapes where ``x`` is already ``[1, 1, M, K]``, so the epilogue fuses into the kernel).
Where no width of intrinsic divides N (ppocr_rec's 6625-class CTC head, ``x`` of shape
``[1, ..., 1, M, K]``), W is padded with zero columns to the next multiple of the widest one, if
that adds at most N / 8 columns: the kernel computes the padded product into a buffer of its own
(whole tiles, never past its end) and returns the first N columns, ``[1, ..., 1, M, N]``.

int8 data is stored as ``uint8(x + 128)`` (an elementwise step that fuses into the kernel
producing ``x``) and ``-128 * sum_c W[o, c]`` is added to the result. The
integer result is identical to the convolution's. The shift ``u`` is made right after ``x``'s
binding, and every later user of ``x`` (the residual add of an inverted-residual block) reads
``int8(u - 128)`` instead: ``x`` keeps one consumer, so the shift fuses into ``x``'s kernel
rather than staying a kernel of its own when ``x`` has several users.

16-bit data (``quant.activation_type=int16``) takes the 16-bit channel form where the target
has one (:data:`compile.intrinsics.AVX512_CHANNEL_DOT_I16_16x2`, AVX-512 VNNI ``vpdpwssd``;
:data:`compile.intrinsics.AVX512_CHANNEL_DOT_I16_8x2`, its 256-bit form, where the output
channels are a multiple of 8 but not of 16): int16 data as it is, with 2 reduction elements
per call, so the weights are packed as ``Wp[o // 16, c // 2, o % 16, c % 2]`` (still int8;
``o // 8`` and ``o % 8`` for 8 lanes) and the kernels are named
``int8_pointwise_nhwc_dot16x2…`` (``…dot8x2…``). uint16 data is stored as ``int16(x - 32768)`` and
``32768 * sum_c W[o, c]`` is added, the same shift the other way round: the int32 sums are
the same modulo 2**32, so the result is identical wherever the convolution's own int32 sum
does not wrap.

K×K convolutions (and strided or padded 1×1 ones) of one group take the same intrinsics
once per tap: ``acc[n, h, w, o] = sum_{kh, kw, c} xp[n, h * s + kh, w * s + kw, c] *
W[o, kh, kw, c]`` over the padded input ``xp``, with the weights packed per tap as
``Wp[o // L, kh, kw, c // 4, o % L, c % 4]`` (16-bit data: ``c // 2``, ``c % 2``) into
``call_tir(int8_conv_nhwc_dot…)`` (:func:`channel_conv_primfunc`). Input channels that are no
multiple of the intrinsic's reduction elements (an image's 3) are padded with zero weights.
The convolution's padding, and that of the channels, becomes a ``pad`` of the input with the
value that stands for zero (0; 128 for int8 stored as uint8, -32768 for uint16 stored as
int16), which fuses into the kernel that makes the input. mobilenet_v2's first convolution
(3 → 32 channels, 3×3, stride 2, int16 input) was a generic kernel of 186 µs (16-bit model,
tuned, Intel Xeon; the tuning job's estimate); packed, one ``vpdpwssd`` per tap and channel
pair, 84 µs after 64 trials.

Run after ``ConvertLayout`` and ``FoldConstant`` (the weights must be constants in OHWI).
Taken only on llvm x86 targets with AVX2 (16-bit data: AVX-512 VNNI), for convolutions with
dilation 1 and one group, uint8, int8, int16 or uint16 data, C a multiple of 4 (16-bit: 2;
K×K: any C), O a multiple of 8 (matmuls: K alike, N padded as above, two rows or more),
static shapes and, on targets without VNNI, weights that cannot saturate ``vpmaddubsw``
(:func:`compile.intrinsics.saturation_free`); anything else is left as is.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from .. import _tvm
from ..intrinsics import (
    INTRINSIC_LANES,
    INTRINSIC_REDUCE,
    LANES,
    REDUCE,
    REDUCE_DATA,
    AVX2_CHANNEL_DOT_8x4,
    channel_intrinsics,
    saturation_free,
)
from ._mutate import rewrite_functions

R = relax.op

#: Name prefix of the dot-product PrimFuncs (fused kernels keep it: the tuning job looks for it).
CHANNEL_DOT_PREFIX = "int8_pointwise_nhwc_dot"
#: Name prefix of the packed K×K (strided) convolutions: the same intrinsics, once per tap.
CHANNEL_CONV_PREFIX = "int8_conv_nhwc_dot"


#: dtype of the data a packed kernel reads -> (stored as, offset added, wide enough for both).
_SHIFTS = {"int8": ("uint8", 128, "int16"), "uint16": ("int16", -32768, "int32")}


def _tag(lanes: int, reduce: int) -> str:
    if reduce != REDUCE:
        return f"{lanes}x{reduce}"
    return "" if lanes == LANES else str(lanes)


def channel_dot_name(channels: int, out_channels: int, height: int, width: int,
                     lanes: int = LANES, reduce: int = REDUCE, features: int | None = None) -> str:
    """Name of a dot-product PrimFunc.

    The prefix, then ``16`` for 16 lanes (8-bit data), or ``16x2`` / ``8x2`` for 16 / 8 lanes
    of 2 reduction elements (16-bit data), then its shape, and ``_n<features>`` where it
    returns fewer features than it computes.
    """
    name = (f"{CHANNEL_DOT_PREFIX}{_tag(lanes, reduce)}_c{channels}_o{out_channels}"
            f"_h{height}_w{width}")
    return name if features is None or features == out_channels else f"{name}_n{features}"


def channel_conv_name(channels: int, out_channels: int, kernel: tuple[int, int],
                      strides: tuple[int, int], height: int, width: int,
                      lanes: int = LANES, reduce: int = REDUCE) -> str:
    """Name of a packed K×K convolution PrimFunc.

    As :func:`channel_dot_name`, with the kernel and strides (``k3x3_s2x2``) and the output's
    height and width.
    """
    return (f"{CHANNEL_CONV_PREFIX}{_tag(lanes, reduce)}_c{channels}_o{out_channels}"
            f"_k{kernel[0]}x{kernel[1]}_s{strides[0]}x{strides[1]}_h{height}_w{width}")


def channel_dot_kind(name: str) -> tuple[int, int] | None:
    """(lanes, reduction elements) of the packed kernel a (fused) PrimFunc's name holds.

    None where it holds none (neither a 1×1 dot product nor a K×K convolution).
    """
    for prefix in (CHANNEL_DOT_PREFIX, CHANNEL_CONV_PREFIX):
        if prefix not in name:
            continue
        for lanes, reduce in ((16, 2), (LANES, 2), (16, REDUCE), (LANES, REDUCE)):
            if f"{prefix}{_tag(lanes, reduce)}_" in name:
                return lanes, reduce
    return None


def _i64(*dims: int) -> list:
    return [tvm.tirx.IntImm("int64", d) for d in dims]  # Relax's PrimFuncs use int64 shapes


def pack_weights(weights: np.ndarray, lanes: int = LANES, reduce: int = REDUCE) -> np.ndarray:
    """Pack int8 ``[O, C]`` weights as ``[O / lanes, C / reduce, lanes, reduce]``.

    O must be a multiple of ``lanes``, C of ``reduce``.
    """
    out_channels, channels = weights.shape
    packed = weights.reshape(out_channels // lanes, lanes, channels // reduce, reduce)
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3))


def pack_conv_weights(weights: np.ndarray, lanes: int = LANES, reduce: int = REDUCE) -> np.ndarray:
    """Pack int8 ``[O, KH, KW, C]`` weights as ``[O / lanes, KH, KW, C / reduce, lanes, reduce]``.

    Each tap packed as :func:`pack_weights` packs a 1×1 convolution's weights.
    """
    out_channels, kh, kw, channels = weights.shape
    packed = weights.reshape(out_channels // lanes, lanes, kh, kw, channels // reduce, reduce)
    return np.ascontiguousarray(packed.transpose(0, 2, 3, 4, 1, 5))


def channel_conv_primfunc(n: int, height: int, width: int, channels: int, out_channels: int,
                          kernel: tuple[int, int], strides: tuple[int, int],
                          lanes: int = LANES, reduce: int = REDUCE):
    """A K×K convolution of the padded input ``x``, on packed weights.

    ``(x [n, H, W, C], wp: int8 [O/lanes, KH, KW, C/reduce, lanes, reduce]) -> int32
    [n, (H - KH) / SH + 1, (W - KW) / SW + 1, O]``. ``x`` is uint8, or int16 for ``reduce`` 2,
    as in :func:`channel_dot_primfunc`.
    """
    (taps_h, taps_w), (stride_h, stride_w) = kernel, strides
    out_h, out_w = (height - taps_h) // stride_h + 1, (width - taps_w) // stride_w + 1
    x = te.placeholder(_i64(n, height, width, channels), REDUCE_DATA[reduce], "x")
    wp = te.placeholder(_i64(out_channels // lanes, taps_h, taps_w, channels // reduce, lanes,
                             reduce), "int8", "wp")
    kh = te.reduce_axis(_i64(0, taps_h), "kh")
    kw = te.reduce_axis(_i64(0, taps_w), "kw")
    c = te.reduce_axis(_i64(0, channels), "c")
    acc = te.compute(
        _i64(n, out_h, out_w, out_channels),
        lambda b, h, w, o: te.sum(
            x[b, h * stride_h + kh, w * stride_w + kw, c].astype("int32")
            * wp[o // lanes, kh, kw, c // reduce, o % lanes, c % reduce].astype("int32"),
            axis=[kh, kw, c]),
        name=CHANNEL_CONV_PREFIX)
    return te.create_prim_func([x, wp, acc]).without_attr("global_symbol")


def channel_dot_primfunc(n: int, height: int, width: int, channels: int, out_channels: int,
                         lanes: int = LANES, reduce: int = REDUCE,
                         features: int | None = None, lead: tuple[int, ...] = ()):
    """``(x [n, H, W, C], wp: int8 [O/lanes, C/reduce, lanes, reduce]) -> int32 [n, H, W, O]``.

    ``x`` is uint8, or int16 for ``reduce`` 2 (the 16-bit channel form). With ``features``
    (fewer than O: a matmul's output features padded to whole tiles, ``n`` and ``H`` 1), the
    product is computed into a buffer of its own and the function returns its first
    ``features`` columns as ``int32 [*lead, features]``, ``lead`` being ``[1, ..., 1, W]`` (the
    matmul's leading dimensions: W rows).
    """
    x = te.placeholder(_i64(n, height, width, channels), REDUCE_DATA[reduce], "x")
    wp = te.placeholder(_i64(out_channels // lanes, channels // reduce, lanes, reduce),
                        "int8", "wp")
    c = te.reduce_axis(_i64(0, channels), "c")
    acc = te.compute(
        _i64(n, height, width, out_channels),
        lambda b, h, w, o: te.sum(
            x[b, h, w, c].astype("int32")
            * wp[o // lanes, c // reduce, o % lanes, c % reduce].astype("int32"), axis=c),
        name=CHANNEL_DOT_PREFIX)
    if features is None or features == out_channels:
        return te.create_prim_func([x, wp, acc]).without_attr("global_symbol")
    zero = tvm.tirx.IntImm("int64", 0)
    out = te.compute(_i64(*lead, features), lambda *i: acc[zero, zero, i[-2], i[-1]],
                     name="features")
    return te.create_prim_func([x, wp, out]).without_attr("global_symbol")


def _offset(x: relax.Expr, dtype: str, value: int, wide: str, op=R.add) -> relax.Expr:
    """``dtype(op(wide(x), value))``."""
    return R.astype(op(R.astype(x, wide), relax.const(np.full((1, 1, 1, 1), value, wide))), dtype)


def _shifted(x: relax.Expr) -> relax.Expr:
    """int8 ``x`` as ``uint8(x + 128)``, uint16 as ``int16(x - 32768)``: what intrinsics read."""
    stored, value, wide = _SHIFTS[str(x.ty.dtype)]
    return _offset(x, stored, value, wide)


def _shifted_back(u: relax.Expr, dtype: str) -> relax.Expr:
    """The ``dtype`` tensor that :func:`_shifted` made ``u`` from, bit for bit."""
    _, value, wide = _SHIFTS[dtype]
    return _offset(u, dtype, value, wide, R.subtract)


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, intrinsics: dict[int, list[str]]) -> None:
        super().__init__(mod)
        self.conv2d = tvm.ir.Op.get("relax.nn.conv2d")
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.intrinsics = intrinsics  # by data bits, widest first
        self.packed = self.saturating = 0
        self.packed_by: dict[str, int] = {}
        self._funcs: dict[tuple, tvm.ir.GlobalVar] = {}
        self._to_shift: set = set()  # int8/uint16 vars that packed convolutions read
        self._shifted: dict = {}  # var read back from its shift -> the shifted var

    def plan(self, call) -> tuple[str, np.ndarray] | str | None:
        """(intrinsic, weights [O, C]) for a packable conv2d or matmul, "saturating", or None."""
        if isinstance(call, relax.Call) and call.op.same_as(self.matmul):
            return self._plan_matmul(call)
        if not isinstance(call, relax.Call) or not call.op.same_as(self.conv2d):
            return None
        data, kernel = call.args
        attrs = call.attrs
        shape = getattr(data.ty, "shape", None)
        if (not isinstance(kernel, _tvm.RelaxConstant) or shape is None
                or str(attrs.out_dtype) != "int32"
                or str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "OHWI"
                or str(attrs.out_layout) != "NHWC" or int(attrs.groups) != 1
                or not all(isinstance(v, tvm.tirx.IntImm) for v in shape)
                or any(int(v) != 1 for v in attrs.dilation)):
            return None
        w = kernel.value.numpy()
        if w.dtype != np.int8:
            return None
        dtype, channels = str(data.ty.dtype), int(shape[3])
        if (w.shape[1:3] == (1, 1) and all(int(v) == 1 for v in attrs.strides)
                and all(int(v) == 0 for v in attrs.padding)):
            intrinsic = self._intrinsic(dtype, w.shape[0], channels)
            return intrinsic and self._checked(intrinsic, np.ascontiguousarray(w[:, 0, 0, :]))
        # K×K, strided or padded: input channels padded with zero weights to whole calls.
        intrinsic = self._intrinsic(dtype, w.shape[0], channels, pad_channels=True)
        if intrinsic is None:
            return None
        reduce = INTRINSIC_REDUCE.get(intrinsic, REDUCE)
        extra = -channels % reduce
        return self._checked(intrinsic, np.pad(w, ((0, 0), (0, 0), (0, 0), (0, extra))))

    def _intrinsic(self, dtype: str, out_channels: int, channels: int,
                   pad_channels: bool = False, pad_features: bool = False) -> str | None:
        """The widest intrinsic for ``dtype`` data that fits the channels (None: none).

        Its lanes must divide the output channels (with ``pad_features``: or pad them to whole
        tiles with at most ``out_channels / 8`` more) and (unless ``pad_channels``) its
        reduction elements the input ones.
        """
        bits = {"uint8": 8, "int8": 8, "int16": 16, "uint16": 16}.get(dtype)
        return next((i for i in self.intrinsics.get(bits, [])
                     if -out_channels % INTRINSIC_LANES[i]
                     <= (out_channels // 8 if pad_features else 0)
                     and (pad_channels or channels % INTRINSIC_REDUCE.get(i, REDUCE) == 0)),
                    None)

    @staticmethod
    def _checked(intrinsic: str, weights: np.ndarray) -> tuple[str, np.ndarray] | str:
        flat = weights.reshape(weights.shape[0], -1)  # [O, C] or [O, KH * KW * C]
        if intrinsic == AVX2_CHANNEL_DOT_8x4 and not saturation_free(flat):
            return "saturating"
        return intrinsic, weights

    def _plan_matmul(self, call) -> tuple[str, np.ndarray] | str | None:
        data, kernel = call.args
        shape = getattr(data.ty, "shape", None)
        if (not isinstance(kernel, _tvm.RelaxConstant) or shape is None or len(shape) < 2
                or str(call.attrs.out_dtype) != "int32"
                or not all(isinstance(v, tvm.tirx.IntImm) for v in shape)):
            return None
        w = kernel.value.numpy()  # [K, N]
        rows = int(np.prod([int(v) for v in list(shape)[:-1]]))
        if w.dtype != np.int8 or w.ndim != 2 or rows < 2:
            return None  # one row (mobilenet_v2's classifier): every tensorized candidate
            # of MetaSchedule's space failed to build or run (2026-11-23), so it stays
        dtype, (channels, features) = str(data.ty.dtype), w.shape
        intrinsic = self._intrinsic(dtype, features, channels)
        if intrinsic is not None:
            return self._checked(intrinsic, np.ascontiguousarray(w.T))
        # Output features no lanes divide (ppocr_rec's 6625-class CTC head): zero weights pad
        # them to whole tiles where that adds at most an eighth; the kernel computes the padded
        # product into a buffer of its own and returns the real features.
        if any(int(v) != 1 for v in list(shape)[:-2]):
            return None  # the kernel writes [1, M, N] itself: one matrix of rows only
        intrinsic = self._intrinsic(dtype, features, channels, pad_features=True)
        if intrinsic is None:
            return None
        extra = -features % INTRINSIC_LANES[intrinsic]
        return self._checked(intrinsic, np.ascontiguousarray(np.pad(w, ((0, 0), (0, extra))).T))

    def find_shifted_inputs(self, func: relax.Function) -> None:
        """Note the int8 and uint16 variables that packed convolutions of ``func`` read."""
        def visit(expr):
            if isinstance(self.plan(expr), tuple) and isinstance(expr.args[0], relax.Var) \
                    and str(expr.args[0].ty.dtype) in _SHIFTS:
                self._to_shift.add(expr.args[0])

        relax.analysis.post_order_visit(func, visit)

    def visit_var_binding_(self, binding) -> None:  # noqa: D102 (PyExprMutator hook)
        super().visit_var_binding_(binding)
        if binding.var not in self._to_shift:
            return
        # uint8(x + 128) (uint16: int16(x - 32768)) right where x is made: the shift is x's
        # only consumer and fuses into x's kernel. Every later user of x (the convolutions,
        # and a residual add that may come first in binding order) reads x back as
        # int8(u - 128), bit for bit; the convolutions then take u itself.
        x = self.get_var_remap(binding.var)
        x = binding.var if x is None else x  # None: re-emitted as it was
        shifted = self.builder_.emit(_shifted(x))
        back = self.builder_.emit(_shifted_back(shifted, str(x.ty.dtype)))
        self.set_var_remap(binding.var, back)
        self._shifted[back] = shifted

    def visit_call_(self, call):  # noqa: D102 (PyExprMutator hook)
        call = super().visit_call_(call)
        plan = self.plan(call)
        if plan == "saturating":
            self.saturating += 1
        if not isinstance(plan, tuple):
            return call
        intrinsic, weights = plan
        if weights.ndim == 4:
            return self._convolution(call, intrinsic, weights)
        data = call.args[0]
        matmul = call.op.same_as(self.matmul)
        if matmul:  # [..., M, K] x [K, N]: all rows as the pixels of one row, K channels
            *lead, channels = (int(v) for v in data.ty.shape)
            n, height, width = 1, 1, int(np.prod(lead))
        else:
            n, height, width, channels = (int(v) for v in data.ty.shape)
        self.packed += 1
        self.packed_by[intrinsic] = self.packed_by.get(intrinsic, 0) + 1
        lanes = INTRINSIC_LANES[intrinsic]
        reduce = INTRINSIC_REDUCE.get(intrinsic, REDUCE)
        out_channels = weights.shape[0]
        features = int(call.args[1].ty.shape[-1]) if matmul else out_channels
        key = (n, height, width, channels, out_channels, lanes, reduce, features,
               tuple(lead) if features != out_channels else ())
        if key not in self._funcs:
            self._funcs[key] = self.builder_.add_func(
                channel_dot_primfunc(*key),
                channel_dot_name(channels, out_channels, height, width, lanes, reduce,
                                 features))
        data, shift, _ = self._shift_input(data, weights)
        rows = [1, 1, width, channels]  # a matmul's input as one image row
        if matmul and [int(v) for v in data.ty.shape] != rows:
            data = self.builder_.emit(R.reshape(data, rows))
        out_shape = ([n, height, width, out_channels] if features == out_channels
                     else [*lead, features])  # padded: [1, ..., 1, M, features] (see plan)
        acc = relax.call_tir(self._funcs[key],
                             [data, relax.const(pack_weights(weights, lanes, reduce))],
                             relax.TensorType(out_shape, "int32"))
        acc = self._add_shift(acc, None if shift is None else shift[:features], len(out_shape))
        if not matmul or [*lead, features] == out_shape:  # the epilogue fuses into the kernel
            return acc
        return R.reshape(self.builder_.emit(acc), [*lead, out_channels])

    def _convolution(self, call, intrinsic: str, weights: np.ndarray) -> relax.Expr:
        """A K×K convolution as ``call_tir`` of :func:`channel_conv_primfunc`.

        Its padding (and the input channels' padding to whole intrinsic calls) is a ``pad``
        of the input, with the value that stands for zero (128 for int8 stored as uint8,
        -32768 for uint16 stored as int16), which fuses into the kernel producing the input.
        """
        data = call.args[0]
        n, height, width, channels = (int(v) for v in data.ty.shape)
        out_channels, taps_h, taps_w, padded = weights.shape
        lanes, reduce = INTRINSIC_LANES[intrinsic], INTRINSIC_REDUCE.get(intrinsic, REDUCE)
        strides = tuple(int(v) for v in call.attrs.strides)
        top, left, bottom, right = (int(v) for v in call.attrs.padding)
        height, width = height + top + bottom, width + left + right
        out_h, out_w = (height - taps_h) // strides[0] + 1, (width - taps_w) // strides[1] + 1
        self.packed += 1
        self.packed_by[intrinsic] = self.packed_by.get(intrinsic, 0) + 1
        key = ("conv", n, height, width, padded, out_channels, (taps_h, taps_w), strides,
               lanes, reduce)
        if key not in self._funcs:
            self._funcs[key] = self.builder_.add_func(
                channel_conv_primfunc(*key[1:]),
                channel_conv_name(channels, out_channels, (taps_h, taps_w), strides, out_h,
                                  out_w, lanes, reduce))
        data, shift, zero = self._shift_input(data, weights)
        if top or left or bottom or right or padded != channels:
            data = self.builder_.emit(R.nn.pad(
                data, [0, 0, top, bottom, left, right, 0, padded - channels],
                pad_value=float(zero)))
        acc = relax.call_tir(self._funcs[key],
                             [data, relax.const(pack_conv_weights(weights, lanes, reduce))],
                             relax.TensorType([n, out_h, out_w, out_channels], "int32"))
        return self._add_shift(acc, shift)

    def _shift_input(self, data: relax.Expr, weights: np.ndarray):
        """(what the kernel reads, int64 correction per output channel or None, stored 0).

        int8 and uint16 data are read shifted (:func:`_shifted`): 0 is stored as the offset
        (128, -32768), and the correction is ``-offset * sum(W[o])`` over each output
        channel's weights. Other data is read as is, 0 stored as 0.
        """
        dtype = str(data.ty.dtype)
        if dtype not in _SHIFTS:
            return data, None, 0
        offset = _SHIFTS[dtype][1]
        shift = -offset * weights.reshape(weights.shape[0], -1).astype(np.int64)
        shifted = self._shifted.get(data)
        data = shifted if shifted is not None else self.builder_.emit(_shifted(data))
        return data, shift.sum(axis=1), offset

    def _add_shift(self, acc: relax.Expr, shift: np.ndarray | None, rank: int = 4) -> relax.Expr:
        """``acc + shift`` per output channel (``acc`` where there is no shift).

        The channels are the last of ``rank`` axes. The shift is wrapped to int32 as the
        kernel's sums wrap (uint16: up to 2**46).
        """
        if shift is None:
            return acc
        shift = ((shift + 2**31) % 2**32 - 2**31).astype(np.int32)
        return R.add(self.builder_.emit(acc), relax.const(shift.reshape([1] * (rank - 1) + [-1])))


@tvm.transform.module_pass(opt_level=0, name="PackPointwiseNHWC")
class PackPointwiseNHWC:
    """Rewrite NHWC 8/16-bit × int8 convolutions and matmuls into packed dot products.

    See the module docstring.

    Attributes
    ----------
    intrinsic : str or None
        The current target's channel dot intrinsics in the last run (8-bit data, widest first,
        then 16-bit), joined by ``+`` (None: the target has none).
    packed, saturating : int
        Convolutions and matmuls packed by the last run, and those left because their weights
        could saturate ``vpmaddubsw`` (targets without VNNI).
    packed_by : dict of str to int
        Convolutions and matmuls packed by the last run, by intrinsic.
    """

    def __init__(self) -> None:
        self.intrinsic: str | None = None
        self.packed = self.saturating = 0
        self.packed_by: dict[str, int] = {}

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Rewrite every Relax function of the module under the current target."""
        target = tvm.target.Target.current(allow_none=True)
        intrinsics = {bits: channel_intrinsics(target, bits) for bits in (8, 16)}
        self.intrinsic = "+".join(intrinsics[8] + intrinsics[16]) or None
        self.packed = self.saturating = 0
        self.packed_by = {}
        if not self.intrinsic:
            return mod
        rewriter = _Rewriter(mod, intrinsics)
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                rewriter.find_shifted_inputs(func)
        new = rewrite_functions(mod, rewriter, lambda: rewriter.packed > 0)
        self.packed, self.saturating = rewriter.packed, rewriter.saturating
        self.packed_by = dict(rewriter.packed_by)
        return new
