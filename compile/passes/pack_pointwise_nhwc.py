"""PackPointwiseNHWC: channels-last uint8 × int8 1×1 convolutions and matmuls on x86 dot intrinsics.

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

Run after ``ConvertLayout`` and ``FoldConstant`` (the weights must be constants in OHWI).
Taken only on llvm x86 targets with AVX2, for 1×1 convolutions with stride 1, no padding,
dilation 1, one group, uint8 or int8 data, C a multiple of 4, O a multiple of 8 (matmuls: K a
multiple of 4, N a multiple of 8, two rows or more), static shapes and,
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
    LANES,
    REDUCE,
    AVX2_CHANNEL_DOT_8x4,
    channel_intrinsics,
    saturation_free,
)
from ._mutate import rewrite_functions

R = relax.op

#: Name prefix of the dot-product PrimFuncs (fused kernels keep it: the tuning job looks for it).
CHANNEL_DOT_PREFIX = "int8_pointwise_nhwc_dot"


def channel_dot_name(channels: int, out_channels: int, height: int, width: int,
                     lanes: int = LANES) -> str:
    """Name of a dot-product PrimFunc: the prefix, then ``16`` for 16 lanes, then its shape."""
    width_tag = "" if lanes == LANES else str(lanes)
    return f"{CHANNEL_DOT_PREFIX}{width_tag}_c{channels}_o{out_channels}_h{height}_w{width}"


def channel_dot_lanes(name: str) -> int | None:
    """Lanes of the dot-product kernel a (fused) PrimFunc's name holds (None: holds none)."""
    if CHANNEL_DOT_PREFIX not in name:
        return None
    return 16 if f"{CHANNEL_DOT_PREFIX}16_" in name else LANES


def _i64(*dims: int) -> list:
    return [tvm.tirx.IntImm("int64", d) for d in dims]  # Relax's PrimFuncs use int64 shapes


def pack_weights(weights: np.ndarray, lanes: int = LANES) -> np.ndarray:
    """Pack int8 ``[O, C]`` weights as ``[O / lanes, C / 4, lanes, 4]`` (O a multiple of lanes)."""
    out_channels, channels = weights.shape
    packed = weights.reshape(out_channels // lanes, lanes, channels // REDUCE, REDUCE)
    return np.ascontiguousarray(packed.transpose(0, 2, 1, 3))


def channel_dot_primfunc(n: int, height: int, width: int, channels: int, out_channels: int,
                         lanes: int = LANES):
    """``(x: uint8 [n, H, W, C], wp: int8 [O/lanes, C/4, lanes, 4]) -> int32 [n, H, W, O]``."""
    x = te.placeholder(_i64(n, height, width, channels), "uint8", "x")
    wp = te.placeholder(_i64(out_channels // lanes, channels // REDUCE, lanes, REDUCE),
                        "int8", "wp")
    c = te.reduce_axis(_i64(0, channels), "c")
    acc = te.compute(
        _i64(n, height, width, out_channels),
        lambda b, h, w, o: te.sum(
            x[b, h, w, c].astype("int32")
            * wp[o // lanes, c // REDUCE, o % lanes, c % REDUCE].astype("int32"), axis=c),
        name=CHANNEL_DOT_PREFIX)
    return te.create_prim_func([x, wp, acc]).without_attr("global_symbol")


def _const_i16(value: int) -> relax.Constant:
    return relax.const(np.full((1, 1, 1, 1), value, np.int16))


def _to_uint8(x: relax.Expr) -> relax.Expr:
    """``uint8(int16(x) + 128)`` of int8 ``x``: the data the dot intrinsics read."""
    return R.astype(R.add(R.astype(x, "int16"), _const_i16(128)), "uint8")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, intrinsics: list[str]) -> None:
        super().__init__(mod)
        self.conv2d = tvm.ir.Op.get("relax.nn.conv2d")
        self.matmul = tvm.ir.Op.get("relax.matmul")
        self.intrinsics = intrinsics
        self.packed = self.saturating = 0
        self.packed_by: dict[str, int] = {}
        self._funcs: dict[tuple, tvm.ir.GlobalVar] = {}
        self._to_shift: set = set()  # int8 vars that packed convolutions read
        self._shifted: dict = {}  # int8 var read back from its shift -> the uint8 var

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
                or str(data.ty.dtype) not in ("uint8", "int8") or str(attrs.out_dtype) != "int32"
                or str(attrs.data_layout) != "NHWC" or str(attrs.kernel_layout) != "OHWI"
                or str(attrs.out_layout) != "NHWC" or int(attrs.groups) != 1
                or not all(isinstance(v, tvm.tirx.IntImm) for v in shape)
                or any(int(v) != 1 for v in [*attrs.strides, *attrs.dilation])
                or any(int(v) != 0 for v in attrs.padding)):
            return None
        w = kernel.value.numpy()
        # The widest intrinsic whose lanes divide the output channels.
        intrinsic = next((i for i in self.intrinsics if w.shape[0] % INTRINSIC_LANES[i] == 0),
                         None)
        if (w.dtype != np.int8 or w.shape[1:3] != (1, 1) or int(shape[3]) % REDUCE
                or not intrinsic):
            return None
        return self._checked(intrinsic, np.ascontiguousarray(w[:, 0, 0, :]))

    @staticmethod
    def _checked(intrinsic: str, weights: np.ndarray) -> tuple[str, np.ndarray] | str:
        if intrinsic == AVX2_CHANNEL_DOT_8x4 and not saturation_free(weights):
            return "saturating"
        return intrinsic, weights

    def _plan_matmul(self, call) -> tuple[str, np.ndarray] | str | None:
        data, kernel = call.args
        shape = getattr(data.ty, "shape", None)
        if (not isinstance(kernel, _tvm.RelaxConstant) or shape is None or len(shape) < 2
                or str(data.ty.dtype) not in ("uint8", "int8")
                or str(call.attrs.out_dtype) != "int32"
                or not all(isinstance(v, tvm.tirx.IntImm) for v in shape)):
            return None
        w = kernel.value.numpy()  # [K, N]
        rows = int(np.prod([int(v) for v in list(shape)[:-1]]))
        if w.dtype != np.int8 or w.ndim != 2 or w.shape[0] % REDUCE or rows < 2:
            return None  # one row (mobilenet_v2's classifier): every tensorized candidate
            # of MetaSchedule's space failed to build or run (2026-11-23), so it stays
        # Output features no lanes divide stay: padded to whole tiles (zero weights, the result
        # sliced back in the kernel), ppocr_rec's 6625-class head ran in 85 us instead of 400,
        # but its tuned kernel computed wrong results in the built model although its record
        # passed the record check (2026-11-23, not understood yet).
        intrinsic = next((i for i in self.intrinsics if w.shape[1] % INTRINSIC_LANES[i] == 0),
                         None)
        if intrinsic is None:
            return None
        return self._checked(intrinsic, np.ascontiguousarray(w.T))

    def find_int8_inputs(self, func: relax.Function) -> None:
        """Note the int8 variables that packed convolutions of ``func`` read."""
        def visit(expr):
            if isinstance(self.plan(expr), tuple) and isinstance(expr.args[0], relax.Var) \
                    and str(expr.args[0].ty.dtype) == "int8":
                self._to_shift.add(expr.args[0])

        relax.analysis.post_order_visit(func, visit)

    def visit_var_binding_(self, binding) -> None:  # noqa: D102 (PyExprMutator hook)
        super().visit_var_binding_(binding)
        if binding.var not in self._to_shift:
            return
        # uint8(x + 128) right where x is made: the shift is x's only consumer and fuses into
        # x's kernel. Every later user of x (the convolutions, and a residual add that may
        # come first in binding order) reads x back as int8(u - 128), bit for bit; the
        # convolutions then take u itself.
        x = self.get_var_remap(binding.var)
        x = binding.var if x is None else x  # None: re-emitted as it was
        shifted = self.builder_.emit(_to_uint8(x))
        back = self.builder_.emit(R.astype(R.subtract(R.astype(shifted, "int16"),
                                                      _const_i16(128)), "int8"))
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
        out_channels = weights.shape[0]
        key = (n, height, width, channels, out_channels, lanes)
        if key not in self._funcs:
            self._funcs[key] = self.builder_.add_func(
                channel_dot_primfunc(*key),
                channel_dot_name(channels, out_channels, height, width, lanes))
        shift = None
        if str(data.ty.dtype) == "int8":
            shifted = self._shifted.get(data)
            data = shifted if shifted is not None else self.builder_.emit(_to_uint8(data))
            shift = -128 * weights.astype(np.int64).sum(axis=1)
        rows = [1, 1, width, channels]  # a matmul's input as one image row
        if matmul and [int(v) for v in data.ty.shape] != rows:
            data = self.builder_.emit(R.reshape(data, rows))
        acc = relax.call_tir(self._funcs[key], [data, relax.const(pack_weights(weights, lanes))],
                             relax.TensorType([n, height, width, out_channels], "int32"))
        if shift is not None:
            acc = R.add(self.builder_.emit(acc),
                        relax.const(shift.astype(np.int32).reshape(1, 1, 1, out_channels)))
        if not matmul or lead == rows[:3]:  # [1, 1, M, N]: the epilogue fuses into the kernel
            return acc
        return R.reshape(self.builder_.emit(acc), [*lead, out_channels])


@tvm.transform.module_pass(opt_level=0, name="PackPointwiseNHWC")
class PackPointwiseNHWC:
    """Rewrite NHWC uint8 × int8 1×1 convolutions and matmuls into packed dot products.

    See the module docstring.

    Attributes
    ----------
    intrinsic : str or None
        The current target's channel dot intrinsics in the last run, widest first and joined by
        ``+`` (None: the target has none).
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
        intrinsics = channel_intrinsics(tvm.target.Target.current(allow_none=True))
        self.intrinsic = "+".join(intrinsics) or None
        self.packed = self.saturating = 0
        self.packed_by = {}
        if not intrinsics:
            return mod
        rewriter = _Rewriter(mod, intrinsics)
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                rewriter.find_int8_inputs(func)
        new = rewrite_functions(mod, rewriter, lambda: rewriter.packed > 0)
        self.packed, self.saturating = rewriter.packed, rewriter.saturating
        self.packed_by = dict(rewriter.packed_by)
        return new
