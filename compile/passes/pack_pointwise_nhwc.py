"""PackPointwiseNHWC: channels-last 1×1 convolutions and matmuls on x86 dot intrinsics.

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

int8 data is stored as ``uint8(x + 128)`` (an elementwise step that fuses into the kernel
producing ``x``) and ``-128 * sum_c W[o, c]`` is added to the result. The
integer result is identical to the convolution's. The shift ``u`` is made right after ``x``'s
binding, and every later user of ``x`` (the residual add of an inverted-residual block) reads
``int8(u - 128)`` instead: ``x`` keeps one consumer, so the shift fuses into ``x``'s kernel
rather than staying a kernel of its own when ``x`` has several users.

16-bit data (``quant.activation_type=int16``) takes the 16-bit channel form where the target
has one (:data:`compile.intrinsics.AVX512_CHANNEL_DOT_I16_16x2`, AVX-512 VNNI ``vpdpwssd``):
int16 data as it is, with 2 reduction elements per call, so the weights are packed as
``Wp[o // 16, c // 2, o % 16, c % 2]`` (still int8) and the kernels are named
``int8_pointwise_nhwc_dot16x2…``. uint16 data is stored as ``int16(x - 32768)`` and
``32768 * sum_c W[o, c]`` is added, the same shift the other way round: the int32 sums are
the same modulo 2**32, so the result is identical wherever the convolution's own int32 sum
does not wrap.

Run after ``ConvertLayout`` and ``FoldConstant`` (the weights must be constants in OHWI).
Taken only on llvm x86 targets with AVX2 (16-bit data: AVX-512 VNNI), for 1×1 convolutions with
stride 1, no padding, dilation 1, one group, uint8, int8, int16 or uint16 data, C a multiple of
4 (16-bit: 2), O a multiple of 8 (16-bit: 16) (matmuls: K and N alike, two rows or more),
static shapes and,
on targets without VNNI, weights that cannot saturate ``vpmaddubsw``
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


#: dtype of the data a packed kernel reads -> (stored as, offset added, wide enough for both).
_SHIFTS = {"int8": ("uint8", 128, "int16"), "uint16": ("int16", -32768, "int32")}


def _tag(lanes: int, reduce: int) -> str:
    return ("" if lanes == LANES else str(lanes)) + ("" if reduce == REDUCE else f"x{reduce}")


def channel_dot_name(channels: int, out_channels: int, height: int, width: int,
                     lanes: int = LANES, reduce: int = REDUCE) -> str:
    """Name of a dot-product PrimFunc.

    The prefix, then ``16`` for 16 lanes and ``x2`` for 2 reduction elements (16-bit data),
    then its shape.
    """
    return (f"{CHANNEL_DOT_PREFIX}{_tag(lanes, reduce)}_c{channels}_o{out_channels}"
            f"_h{height}_w{width}")


def channel_dot_kind(name: str) -> tuple[int, int] | None:
    """(lanes, reduction elements) of the dot-product kernel a (fused) PrimFunc's name holds.

    None where it holds none.
    """
    if CHANNEL_DOT_PREFIX not in name:
        return None
    for lanes, reduce in ((16, 2), (16, REDUCE), (LANES, REDUCE)):
        if f"{CHANNEL_DOT_PREFIX}{_tag(lanes, reduce)}_" in name:
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


def channel_dot_primfunc(n: int, height: int, width: int, channels: int, out_channels: int,
                         lanes: int = LANES, reduce: int = REDUCE):
    """``(x [n, H, W, C], wp: int8 [O/lanes, C/reduce, lanes, reduce]) -> int32 [n, H, W, O]``.

    ``x`` is uint8, or int16 for ``reduce`` 2 (the 16-bit channel form).
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
    return te.create_prim_func([x, wp, acc]).without_attr("global_symbol")


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
                or any(int(v) != 1 for v in [*attrs.strides, *attrs.dilation])
                or any(int(v) != 0 for v in attrs.padding)):
            return None
        w = kernel.value.numpy()
        intrinsic = self._intrinsic(str(data.ty.dtype), w.shape[0], int(shape[3]))
        if w.dtype != np.int8 or w.shape[1:3] != (1, 1) or not intrinsic:
            return None
        return self._checked(intrinsic, np.ascontiguousarray(w[:, 0, 0, :]))

    def _intrinsic(self, dtype: str, out_channels: int, channels: int) -> str | None:
        """The widest intrinsic for ``dtype`` data that fits the channels (None: none).

        Its lanes must divide the output channels and its reduction elements the input ones.
        """
        bits = {"uint8": 8, "int8": 8, "int16": 16, "uint16": 16}.get(dtype)
        return next((i for i in self.intrinsics.get(bits, [])
                     if out_channels % INTRINSIC_LANES[i] == 0
                     and channels % INTRINSIC_REDUCE.get(i, REDUCE) == 0), None)

    @staticmethod
    def _checked(intrinsic: str, weights: np.ndarray) -> tuple[str, np.ndarray] | str:
        if intrinsic == AVX2_CHANNEL_DOT_8x4 and not saturation_free(weights):
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
        # Output features no lanes divide stay: padded to whole tiles (zero weights, the result
        # sliced back in the kernel), ppocr_rec's 6625-class head ran in 85 us instead of 400,
        # but its tuned kernel computed wrong results in the built model although its record
        # passed the record check (2026-11-23, not understood yet).
        intrinsic = self._intrinsic(str(data.ty.dtype), w.shape[1], w.shape[0])
        if intrinsic is None:
            return None
        return self._checked(intrinsic, np.ascontiguousarray(w.T))

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
        key = (n, height, width, channels, out_channels, lanes, reduce)
        if key not in self._funcs:
            self._funcs[key] = self.builder_.add_func(
                channel_dot_primfunc(*key),
                channel_dot_name(channels, out_channels, height, width, lanes, reduce))
        shift = None
        if str(data.ty.dtype) in _SHIFTS:
            shift = -_SHIFTS[str(data.ty.dtype)][1] * weights.astype(np.int64).sum(axis=1)
            shifted = self._shifted.get(data)
            data = shifted if shifted is not None else self.builder_.emit(_shifted(data))
        rows = [1, 1, width, channels]  # a matmul's input as one image row
        if matmul and [int(v) for v in data.ty.shape] != rows:
            data = self.builder_.emit(R.reshape(data, rows))
        acc = relax.call_tir(self._funcs[key],
                             [data, relax.const(pack_weights(weights, lanes, reduce))],
                             relax.TensorType([n, height, width, out_channels], "int32"))
        if shift is not None:  # int32 wraps as the kernel's sums do (uint16: up to 2**46)
            shift = ((shift + 2**31) % 2**32 - 2**31).astype(np.int32)
            acc = R.add(self.builder_.emit(acc),
                        relax.const(shift.reshape(1, 1, 1, out_channels)))
        if not matmul or lead == rows[:3]:  # [1, 1, M, N]: the epilogue fuses into the kernel
            return acc
        return R.reshape(self.builder_.emit(acc), [*lead, out_channels])


@tvm.transform.module_pass(opt_level=0, name="PackPointwiseNHWC")
class PackPointwiseNHWC:
    """Rewrite NHWC 8/16-bit × int8 1×1 convolutions and matmuls into packed dot products.

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
