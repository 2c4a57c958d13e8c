"""Packed uint8 × int8 1×1 convolutions for the x86 dot intrinsics (used by LowerQDQToInteger).

In NCHW, the 4 input channels that one ``vpmaddubsw`` pair-sum or ``vpdpbusd`` reduces are H·W
bytes apart. On x86 targets with AVX2, :class:`~compile.passes.LowerQDQToInteger` computes a
quantized 1×1 convolution as two PrimFuncs instead of ``conv2d(x, W, out_dtype="int32")``:

* ``int8_pack``: ``xp[n, h, w // 8, c // 4, w % 8, c % 4] = x[n, c, h, w]`` (uint8; an int8 ``x``
  is stored as ``x + 128``), each image row zero-padded to a multiple of 8 pixels, so that
  8 pixels × 4 channels are 32 adjacent bytes;
* ``int8_pointwise_dot``: ``acc[n, o, h, w] = sum_c int32(xp[...]) * int32(W[o, c])`` over the
  padded width, whose 8 × 4 inner tile is the target's
  :func:`compile.intrinsics.dot_intrinsic` (the tuning job tensorizes it).

The requantization runs on the padded rows and fuses into the dot product's kernel; the padded
pixels are cut off after it (no cut when the width is a multiple of 8). The integer result is
identical to the convolution's (``+128`` is folded into the zero-point offset).

Taken only when the current target is an llvm x86 target with AVX2, the convolution is 1×1 with
stride 1, no padding, dilation 1, one group, C a multiple of 4, static shapes, and, on targets
without VNNI, the weights are saturation-free for ``vpmaddubsw``
(:func:`compile.intrinsics.saturation_free`: 7-bit weights always are, 8-bit weights of real
models mostly are not; ``vpdpbusd`` is exact for any weights).
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te

from ..intrinsics import LANES, REDUCE, AVX2_DOT_8x4, dot_intrinsic, saturation_free

#: Name prefix of the dot-product PrimFuncs (fused kernels keep it: the tuning job looks for it).
DOT_PREFIX = "int8_pointwise_dot"


def _i64(*dims: int) -> list:
    return [tvm.tirx.IntImm("int64", d) for d in dims]  # Relax's PrimFuncs use int64 shapes


def packed_shape(n: int, channels: int, height: int, width: int) -> list[int]:
    """Shape of the packed input: ``[n, H, ceil(W/8), C/4, 8, 4]``."""
    return [n, height, -(-width // LANES), channels // REDUCE, LANES, REDUCE]


def pack_primfunc(n: int, channels: int, height: int, width: int, dtype: str):
    """The packing PrimFunc: ``(x: dtype [n, C, H, W]) -> uint8 [n, H, ceil(W/8), C/4, 8, 4]``.

    Parameters
    ----------
    n, channels, height, width : int
        Input shape (NCHW); ``channels`` a multiple of 4.
    dtype : {"uint8", "int8"}
        Input dtype; int8 values are stored as ``x + 128``.
    """
    x = te.placeholder(_i64(n, channels, height, width), dtype, "x")

    def value(b, h, w0, c0, w1, c1):
        v = x[b, c0 * REDUCE + c1, h, w0 * LANES + w1].astype("uint8")
        if dtype == "int8":
            v = v ^ tvm.tirx.const(128, "uint8")
        return te.if_then_else(w0 * LANES + w1 < width, v, tvm.tirx.const(0, "uint8"))

    xp = te.compute(_i64(*packed_shape(n, channels, height, width)), value, name="int8_pack")
    return te.create_prim_func([x, xp]).without_attr("global_symbol")


def dot_primfunc(n: int, channels: int, out_channels: int, height: int, width: int):
    """The packed dot product: ``(xp, w: int8 [O, C]) -> int32 [n, O, H, ceil(W/8) * 8]``.

    Parameters
    ----------
    n, channels, out_channels, height, width : int
        Batch, input channels (a multiple of 4), output channels, rows, pixels per row
        (before padding).
    """
    shape = packed_shape(n, channels, height, width)
    xp = te.placeholder(_i64(*shape), "uint8", "xp")
    w = te.placeholder(_i64(out_channels, channels), "int8", "w")
    c = te.reduce_axis(_i64(0, channels), "c")
    acc = te.compute(
        _i64(n, out_channels, height, shape[2] * LANES),
        lambda b, o, h, p: te.sum(
            xp[b, h, p // LANES, c // REDUCE, p % LANES, c % REDUCE].astype("int32")
            * w[o, c].astype("int32"), axis=c),
        name="int8_pointwise_dot")
    return te.create_prim_func([xp, w, acc]).without_attr("global_symbol")


class PointwisePacker:
    """Builds packed 1×1 convolutions for one module run, sharing PrimFuncs between equal shapes.

    Parameters
    ----------
    builder : relax.BlockBuilder
        Over the module being rewritten; the PrimFuncs are added to it.

    Attributes
    ----------
    intrinsic : str or None
        The current target's dot intrinsic (None: nothing is packed).
    packed, saturating : int
        Convolutions packed, and those left because their weights could saturate
        ``vpmaddubsw`` (targets without VNNI).
    """

    def __init__(self, builder: relax.BlockBuilder) -> None:
        self.builder = builder
        self.intrinsic = dot_intrinsic(tvm.target.Target.current(allow_none=True))
        self.packed = 0
        self.saturating = 0
        self._funcs: dict[tuple, tvm.ir.GlobalVar] = {}

    def _func(self, key: tuple, make, name: str) -> tvm.ir.GlobalVar:
        if key not in self._funcs:
            self._funcs[key] = self.builder.add_func(make(), name)
        return self._funcs[key]

    def conv(self, data, attrs, w_q: np.ndarray):
        """The packed form of ``conv2d(data, w_q, out_dtype=int32)``, or None when not taken.

        Returns
        -------
        acc : relax.Expr
            int32 ``[n, O, H, ceil(W/8) * 8]``.
        shift : numpy.ndarray of int64, shape (O,)
            Add to the accumulator offset (``-128 * sum_c W`` for int8 data, else 0).
        width : int or None
            Cut the last axis to this after the requantization (None: nothing padded).
        """
        shape = getattr(data.ty, "shape", None)
        dtype = str(getattr(data.ty, "dtype", ""))
        if (self.intrinsic is None or shape is None or dtype not in ("uint8", "int8")
                or not all(isinstance(v, tvm.tirx.IntImm) for v in shape)
                or int(attrs.groups) != 1 or w_q.shape[2:] != (1, 1)
                or any(int(v) != 1 for v in [*attrs.strides, *attrs.dilation])
                or any(int(v) != 0 for v in attrs.padding)):
            return None
        n, channels, height, width = (int(v) for v in shape)
        out_channels = w_q.shape[0]
        weights = np.ascontiguousarray(w_q[:, :, 0, 0])
        if channels % REDUCE:
            return None
        if self.intrinsic == AVX2_DOT_8x4 and not saturation_free(weights):
            self.saturating += 1
            return None
        self.packed += 1
        pack = self._func(("pack", n, channels, height, width, dtype),
                          lambda: pack_primfunc(n, channels, height, width, dtype),
                          f"int8_pack_{dtype}_c{channels}_h{height}_w{width}")
        dot = self._func(("dot", n, channels, out_channels, height, width),
                         lambda: dot_primfunc(n, channels, out_channels, height, width),
                         f"{DOT_PREFIX}_c{channels}_o{out_channels}_h{height}_w{width}")
        shape = packed_shape(n, channels, height, width)
        padded = shape[2] * LANES
        packed = relax.call_tir(pack, [data], relax.TensorType(shape, "uint8"))
        acc = relax.call_tir(dot, [packed, relax.const(weights)],
                             relax.TensorType([n, out_channels, height, padded], "int32"))
        shift = (-128 * weights.astype(np.int64).sum(axis=1) if dtype == "int8"
                 else np.zeros(out_channels, np.int64))
        return acc, shift, (width if padded != width else None)
