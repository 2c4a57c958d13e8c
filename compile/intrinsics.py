"""Tensor intrinsics of this project: an AVX2 int8 dot product for x86 CPUs without VNNI.

TVM 0.27 ships x86 int8 intrinsics for AVX-512 VNNI (``vpdpbusd``) and AVX-512BW
(``vpmaddubsw`` on 512-bit registers) only (``tvm.s_tir.tensor_intrin.x86``). On AVX2 CPUs
without VNNI (e.g. AMD Zen 3), LLVM computes int8 convolutions by widening to int16 for
``vpmaddwd``, about as fast as float32. :data:`AVX2_DOT_8x4` is the 256-bit form of TVM's
AVX-512BW intrinsic: ``vpmaddubsw`` multiplies 32 uint8 × int8 pairs and adds adjacent
products into int16, ``vpmaddwd`` by ones adds adjacent int16 into the 8 int32 lanes.

``vpmaddubsw`` saturates at ±32767: results are exact only when, for every pair of adjacent
reduction elements, ``255 * |w[2j] + w[2j+1]| <= 32767`` (``|w[2j] + w[2j+1]| <= 128``).
:func:`saturation_free` checks this on constant weights; 7-bit weights (``|w| <= 64``, NNCF's
``overflow_fix``, ONNX Runtime's ``reduce_range``) always pass. Source of the instruction
semantics: Intel Intrinsics Guide, ``_mm256_maddubs_epi16`` and ``_mm256_madd_epi16``.
"""

from __future__ import annotations

import numpy as np
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

#: Name of the AVX2 intrinsic: ``C[i] += sum_k uint8(B[i, k]) * int8(A[k])`` for 8 int32 lanes
#: and 4 reduction elements (B: 8 × 4 uint8, contiguous; A: 4 int8, broadcast).
AVX2_DOT_8x4 = "dot_8x4_u8i8i32_avx2"
#: Lanes (int32 outputs) and reduction elements per intrinsic call.
LANES, REDUCE = 8, 4


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


def _register() -> None:
    """Register :data:`AVX2_DOT_8x4` with TVM, once per process (at import of this module).

    Needed wherever a schedule that uses it is created or replayed: tuning, and applying a
    tuning database whose records tensorize with it (the int8 pipeline imports this module).
    """
    if TensorIntrin.get(AVX2_DOT_8x4, allow_missing=True) is None:
        TensorIntrin.register(AVX2_DOT_8x4, _dot_8x4_desc, _dot_8x4_avx2)


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
