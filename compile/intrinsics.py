"""Tensor intrinsics of this project: uint8 × int8 and int16 × int8 dot products for x86 CPUs.

TVM 0.27 ships x86 int8 intrinsics for AVX-512 VNNI (``vpdpbusd``) and AVX-512BW
(``vpmaddubsw`` on 512-bit registers) only (``tvm.s_tir.tensor_intrin.x86``), both with the
weights as the 16-lane operand. On AVX2 CPUs without VNNI (e.g. AMD Zen 3), LLVM computes int8
convolutions by widening to int16 for ``vpmaddwd``, about as fast as float32.

Both intrinsics here compute ``C[i] += sum_k B[i, k] * A[k]`` for 8 int32 lanes, with B the
packed uint8 input (8 pixels × 4 channels, 32 adjacent bytes) and A 4 int8 weights broadcast
(the layout of ``compile.passes.pointwise_int8``):

* :data:`AVX2_DOT_8x4`, the 256-bit form of TVM's AVX-512BW intrinsic: ``vpmaddubsw``
  multiplies 32 uint8 × int8 pairs and adds adjacent products into int16, ``vpmaddwd`` by ones
  adds adjacent int16 into the 8 int32 lanes. ``vpmaddubsw`` saturates at ±32767: results are
  exact only when, for every pair of adjacent reduction elements,
  ``255 * |w[2j] + w[2j+1]| <= 32767`` (``|w[2j] + w[2j+1]| <= 128``). :func:`saturation_free`
  checks this on constant weights; 7-bit weights (``|w| <= 64``, NNCF's ``overflow_fix``,
  ONNX Runtime's ``reduce_range``) always pass.
* :data:`VNNI_DOT_8x4`: one 256-bit ``vpdpbusd`` (AVX-512 VNNI with AVX-512VL, or AVX-VNNI),
  which adds the four products in int32: exact for any int8 weights.

The *channel* forms (:data:`AVX2_CHANNEL_DOT_8x4`, :data:`VNNI_CHANNEL_DOT_8x4`) swap the
operands' roles for channels-last data: ``C[i] += sum_k uint8(A[k]) * int8(B[i, k])``, with A 4
input channels of one pixel (4 adjacent bytes in NHWC) broadcast and B the packed weights of 8
output channels × 4 input channels (the layout of ``compile.passes.pack_pointwise_nhwc``, and
of TVM's own ``dense_vnni`` with 16 lanes). Same instructions, same exactness conditions.
On AVX-512 VNNI CPUs the channel form also comes 16 lanes wide (:data:`AVX512_CHANNEL_DOT_16x4`:
one 512-bit ``vpdpbusd`` for 16 output channels × 4 input channels), which doubles the
products per instruction where the CPU executes 512-bit operations at full width (AMD Zen 5,
Intel server cores); :func:`channel_intrinsics` lists a target's channel forms, widest first.

For 16-bit activations (``quant.activation_type=int16``) the channel form is
:data:`AVX512_CHANNEL_DOT_I16_16x2`: ``C[i] += sum_k int16(A[k]) * int8(B[i, k])`` for 16
output channels × 2 input channels, on one 512-bit ``vpdpwssd`` (AVX-512 VNNI: 16 int32 lanes,
each adding two int16 × int16 products, without saturation). The weights stay int8 in memory
(32 adjacent bytes) and are sign-extended by one ``vpmovsxbw``; A is one pixel's 2 adjacent
int16 channels, broadcast. Exact for any int16 data and int8 weights as long as the int32 sum
does not wrap. Its 256-bit form :data:`AVX512_CHANNEL_DOT_I16_8x2` (``vpdpwssd ymm``, AVX-512
VNNI with VL) takes 8 output channels, where the output channels are no multiple of 16.

:func:`dot_intrinsic` picks one for a target. Source of the instruction semantics: Intel
Intrinsics Guide, ``_mm256_maddubs_epi16``, ``_mm256_madd_epi16``, ``_mm256_dpbusd_epi32``,
``_mm512_dpbusd_epi32``, ``_mm512_dpwssd_epi32``, ``_mm256_dpwssd_epi32`` and
``_mm512_cvtepi8_epi16``.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.target.codegen import llvm_get_cpu_features

#: Name of the AVX2 intrinsic: ``C[i] += sum_k uint8(B[i, k]) * int8(A[k])`` for 8 int32 lanes
#: and 4 reduction elements (B: 8 × 4 uint8, contiguous; A: 4 int8, broadcast).
AVX2_DOT_8x4 = "dot_8x4_u8i8i32_avx2"
#: The same dot product with ``vpdpbusd`` (exact for any int8 weights).
VNNI_DOT_8x4 = "dot_8x4_u8i8i32_vnni"
#: Channel forms: ``C[i] += sum_k uint8(A[k]) * int8(B[i, k])`` (A: 4 uint8 broadcast; B: 8 × 4
#: int8, contiguous), on ``vpmaddubsw`` + ``vpmaddwd`` and on ``vpdpbusd``.
AVX2_CHANNEL_DOT_8x4 = "channel_dot_8x4_u8i8i32_avx2"
VNNI_CHANNEL_DOT_8x4 = "channel_dot_8x4_u8i8i32_vnni"
#: The channel form on one 512-bit ``vpdpbusd``: 16 output channels (B: 16 × 4 int8, 64
#: contiguous bytes) per call, for AVX-512 VNNI.
AVX512_CHANNEL_DOT_16x4 = "channel_dot_16x4_u8i8i32_avx512vnni"
#: The channel form for 16-bit data on one 512-bit ``vpdpwssd``: ``C[i] += sum_k int16(A[k]) *
#: int8(B[i, k])`` (A: 2 int16 broadcast; B: 16 × 2 int8, 32 contiguous bytes), AVX-512 VNNI.
AVX512_CHANNEL_DOT_I16_16x2 = "channel_dot_16x2_i16i8i32_avx512vnni"
#: Its 256-bit form (8 output channels × 2 input channels on one ``vpdpwssd ymm``; AVX-512 VNNI
#: with AVX-512VL), for output channels that are a multiple of 8 but not of 16.
AVX512_CHANNEL_DOT_I16_8x2 = "channel_dot_8x2_i16i8i32_avx512vnni"
#: Lanes (int32 outputs) and reduction elements per intrinsic call (the 16-lane forms aside).
LANES, REDUCE = 8, 4
#: Lanes of each intrinsic.
INTRINSIC_LANES = {AVX2_DOT_8x4: 8, VNNI_DOT_8x4: 8, AVX2_CHANNEL_DOT_8x4: 8,
                   VNNI_CHANNEL_DOT_8x4: 8, AVX512_CHANNEL_DOT_16x4: 16,
                   AVX512_CHANNEL_DOT_I16_16x2: 16, AVX512_CHANNEL_DOT_I16_8x2: 8}
#: Reduction elements per call where they are not :data:`REDUCE` (the 16-bit channel forms: 2).
INTRINSIC_REDUCE = {AVX512_CHANNEL_DOT_I16_16x2: 2, AVX512_CHANNEL_DOT_I16_8x2: 2}
#: The data a channel form reads, by reduction elements per call: 4 uint8 or 2 int16.
REDUCE_DATA = {REDUCE: "uint8", 2: "int16"}


@T.prim_func(s_tir=True)
def _dot_8x4_desc(A: T.Buffer((4,), "int8", offset_factor=1),
                  B: T.Buffer((8, 4), "uint8", offset_factor=1),
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], B[0:8, 0:4], A[0:4])
        T.writes(C[0:8])
        for i in T.serial(0, 8):
            for k in T.serial(0, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.cast(B[vi, vk], "int32") * T.cast(A[vk], "int32")


@T.prim_func(s_tir=True)
def _dot_8x4_avx2(A: T.Buffer((4,), "int8", offset_factor=1),
                  B: T.Buffer((8, 4), "uint8", offset_factor=1),
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], B[0:8, 0:4], A[0:4])
        T.writes(C[0:8])
        a_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        a_i8x32 = T.reinterpret(T.broadcast(a_i32, 8), dtype="int8x32")
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                                        B.vload([0, 0], dtype="uint8x32"), a_i8x32,
                                        dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1),
            dtype="int32x8")


@T.prim_func(s_tir=True)
def _dot_8x4_vnni(A: T.Buffer((4,), "int8", offset_factor=1),
                  B: T.Buffer((8, 4), "uint8", offset_factor=1),
                  C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], B[0:8, 0:4], A[0:4])
        T.writes(C[0:8])
        a_i32 = T.reinterpret(A.vload([0], "int8x4"), dtype="int32")
        # vpdpbusd(acc, unsigned bytes, signed bytes); LLVM emits the VEX (AVX-VNNI) or the
        # EVEX (AVX-512 VNNI + VL) encoding, whichever the target has. The LLVM of TVM 0.27
        # declares the byte operands <32 x i8> (older LLVMs: <8 x i32>, as TVM's own
        # 512-bit VNNI intrinsic still passes them: such a call fails LLVM's verifier here).
        C[T.ramp(T.int32(0), 1, 8)] = T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.256"),
            C.vload([0], dtype="int32x8"),
            T.reinterpret(B.vload([0, 0], dtype="uint8x32"), dtype="int8x32"),
            T.reinterpret(T.broadcast(a_i32, 8), dtype="int8x32"), dtype="int32x8")


def _channel_dot_desc(lanes: int, reduce: int = REDUCE):
    """The channel form's description: ``lanes`` output channels, ``reduce`` inputs."""
    data = REDUCE_DATA[reduce]

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((reduce,), data, offset_factor=1),
             B: T.Buffer((lanes, reduce), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:reduce], B[0:lanes, 0:reduce])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, reduce):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


@T.prim_func(s_tir=True)
def _channel_dot_8x4_avx2(A: T.Buffer((4,), "uint8", offset_factor=1),
                          B: T.Buffer((8, 4), "int8", offset_factor=1),
                          C: T.Buffer((8,), "int32", offset_factor=1)) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:4], B[0:8, 0:4])
        T.writes(C[0:8])
        a_i32 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
        a_u8x32 = T.reinterpret(T.broadcast(a_i32, 8), dtype="uint8x32")
        pairs = T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.ub.sw"),
                                        a_u8x32, B.vload([0, 0], dtype="int8x32"),
                                        dtype="int16x16")
        C[T.ramp(T.int32(0), 1, 8)] += T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), pairs, T.int16x16(1),
            dtype="int32x8")


def _channel_dot_vnni(lanes: int, reduce: int = REDUCE):
    """The channel form on one VNNI instruction of ``lanes`` int32 (8: 256-bit, 16: 512-bit).

    ``vpdpbusd`` for 4 uint8 inputs (``reduce`` 4), ``vpdpwssd`` for 2 int16 (``reduce`` 2).
    """
    data = REDUCE_DATA[reduce]
    instruction = "vpdpbusd" if reduce == REDUCE else "vpdpwssd"
    intrinsic = f"llvm.x86.avx512.{instruction}.{lanes * 32}"
    # LLVM 22 (TVM 0.27) declares the operands <N x i8> (vpdpbusd) and <N x i16> (vpdpwssd);
    # older LLVMs took <N x i32>, as TVM's own 512-bit VNNI intrinsic still passes them: such
    # a call fails LLVM's verifier here. vpdpwssd's int8 weights widen with one vpmovsxbw
    # (for vpdpbusd the cast is to their own type, a no-op).
    acc, operand = f"int32x{lanes}", f"{'int8' if reduce == REDUCE else 'int16'}x{lanes * reduce}"

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((reduce,), data, offset_factor=1),
             B: T.Buffer((lanes, reduce), "int8", offset_factor=1),
             C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:reduce], B[0:lanes, 0:reduce])
            T.writes(C[0:lanes])
            a_i32 = T.reinterpret(A.vload([0], f"{data}x{reduce}"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(intrinsic), C.vload([0], dtype=acc),
                T.reinterpret(T.broadcast(a_i32, lanes), dtype=operand),
                T.cast(B.vload([0, 0], dtype=f"int8x{lanes * reduce}"), operand), dtype=acc)

    return impl


def _register() -> None:
    """Register the intrinsics with TVM, once per process (at import of this module).

    Needed wherever a schedule that uses them is created or replayed: tuning, and applying a
    tuning database whose records tensorize with them (the int8 pipeline imports this module).
    """
    for name, desc, impl in (
            (AVX2_DOT_8x4, _dot_8x4_desc, _dot_8x4_avx2),
            (VNNI_DOT_8x4, _dot_8x4_desc, _dot_8x4_vnni),
            (AVX2_CHANNEL_DOT_8x4, _channel_dot_desc(8), _channel_dot_8x4_avx2),
            (VNNI_CHANNEL_DOT_8x4, _channel_dot_desc(8), _channel_dot_vnni(8)),
            (AVX512_CHANNEL_DOT_16x4, _channel_dot_desc(16), _channel_dot_vnni(16)),
            (AVX512_CHANNEL_DOT_I16_16x2, _channel_dot_desc(16, 2),
             _channel_dot_vnni(16, 2)),
            (AVX512_CHANNEL_DOT_I16_8x2, _channel_dot_desc(8, 2), _channel_dot_vnni(8, 2))):
        if TensorIntrin.get(name, allow_missing=True) is None:
            TensorIntrin.register(name, desc, impl)


def dot_intrinsic(target: tvm.target.Target | None, channels: bool = False) -> str | None:
    """The dot-product intrinsic for a target, or None when it has neither.

    Parameters
    ----------
    target : tvm.target.Target or None
    channels : bool
        The channel form (lanes over output channels, for NHWC data) instead of the pixel form.

    Returns
    -------
    str or None
        :data:`VNNI_DOT_8x4` (:data:`VNNI_CHANNEL_DOT_8x4`) for llvm targets with AVX-VNNI or
        AVX-512 VNNI + VL, :data:`AVX2_DOT_8x4` (:data:`AVX2_CHANNEL_DOT_8x4`) for other llvm
        targets with AVX2, else None.
    """
    if target is None or target.kind.name != "llvm":
        return None
    features = set(llvm_get_cpu_features(target))
    if "avxvnni" in features or {"avx512vnni", "avx512vl"} <= features:
        return VNNI_CHANNEL_DOT_8x4 if channels else VNNI_DOT_8x4
    if "avx2" not in features:
        return None
    return AVX2_CHANNEL_DOT_8x4 if channels else AVX2_DOT_8x4


def channel_intrinsics(target: tvm.target.Target | None, data_bits: int = 8) -> list[str]:
    """The channel-form intrinsics for a target and data width, widest first (empty: none).

    Parameters
    ----------
    target : tvm.target.Target or None
    data_bits : {8, 16}
        Width of the activations (uint8/int8, or int16/uint16).

    Returns
    -------
    list of str
        8 bits: ``[AVX512_CHANNEL_DOT_16x4, VNNI_CHANNEL_DOT_8x4]`` for llvm targets with
        AVX-512 VNNI (16 lanes where the output channels are a multiple of 16, 8 otherwise),
        else the channel form of :func:`dot_intrinsic` alone, or nothing. 16 bits:
        ``[AVX512_CHANNEL_DOT_I16_16x2, AVX512_CHANNEL_DOT_I16_8x2]`` for llvm targets with
        AVX-512 VNNI and VL (``[AVX512_CHANNEL_DOT_I16_16x2]`` without VL), else nothing.
    """
    if data_bits == 16:
        if target is None or target.kind.name != "llvm":
            return []
        features = set(llvm_get_cpu_features(target))
        if "avx512vnni" not in features:
            return []
        return [AVX512_CHANNEL_DOT_I16_16x2,
                *([AVX512_CHANNEL_DOT_I16_8x2] if "avx512vl" in features else [])]
    narrow = dot_intrinsic(target, channels=True)
    if narrow is None:
        return []
    if "avx512vnni" in set(llvm_get_cpu_features(target)) and narrow == VNNI_CHANNEL_DOT_8x4:
        return [AVX512_CHANNEL_DOT_16x4, narrow]
    return [narrow]


def saturation_free(weights: np.ndarray) -> bool:
    """Whether ``vpmaddubsw`` computes a uint8 × ``weights`` dot product exactly.

    Parameters
    ----------
    weights : numpy.ndarray of int8, shape (out_channels, K)
        The reduction runs over the last axis, paired as the intrinsic pairs it
        (elements 2j and 2j+1); K must be even.

    Returns
    -------
    bool
        True when ``255 * |w[o, 2j] + w[o, 2j+1]| <= 32767`` for every o and j, so no int16
        sum of two uint8 × int8 products can saturate.
    """
    w = weights.astype(np.int32)
    return bool(np.abs(w[:, 0::2] + w[:, 1::2]).max(initial=0) * 255 <= np.iinfo(np.int16).max)


_register()
