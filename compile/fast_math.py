"""A vectorizable ``exp`` for llvm targets: float32 ``tirx.exp`` lowered to arithmetic.

TVM 0.27 lowers ``tirx.exp`` on llvm targets to LLVM's ``llvm.exp`` intrinsic, which LLVM
turns into one call of the C library's ``expf`` per element: no vector form without a vector
math library, so every kernel with an ``exp`` (softmax, sigmoid, tanh, swish) runs it one
element at a time. ppocr_rec's softmax over 6625 classes took 0.44 ms of the 16-bit model's
6.8 ms on 2 threads (Intel Xeon, 2026-11-24).

:func:`register` replaces that lowering, for float32 scalars and vectors, by Cephes' ``expf``
(S. L. Moshier, Cephes Math Library, ``expf.c``: ``exp(x) = 2**n * exp(f)``, ``n =
round(x / ln 2)``, ``f = x - n ln 2`` with ln 2 split in two constants (Cody and Waite), and a
degree-7 polynomial for ``exp(f)`` on ``|f| <= ln(2) / 2``), arithmetic that LLVM vectorizes.
Its relative error is under 2 units in the last place (about 1.2e-7) over the float32 range;
``2**n`` is applied as two halves, so results that underflow to subnormals or overflow to
infinity come out as ``expf``'s do; NaN stays NaN, ``exp(-inf)`` is 0 and ``exp(inf)`` is inf.
float64 and float16 ``exp`` keep TVM's lowering. It is a code-generation rule: kernels and
their tuning workloads are unchanged, so tuning databases stay valid.

Every build of this project goes through :func:`compile.targets.build_target`, which calls
:func:`register` (the compile job, the tuning job's builders, the record check).
"""

from __future__ import annotations

import tvm
from tvm import tirx

#: exp(f) on |f| <= ln(2) / 2 is 1 + f + f**2 * p(f), p with these coefficients (Cephes expf.c).
_POLYNOMIAL = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
               1.6666665459e-1, 5.0000001201e-1)
_LN2_HI, _LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 = _LN2_HI + _LN2_LO, _LN2_HI exact in 9 bits
_LOG2E = 1.44269504088896341
#: Inputs are clamped to [_LOWEST, _HIGHEST]: exp(-104) underflows to 0 and exp(89) overflows
#: to inf in float32, so clamping changes no result and keeps 2**n within two float exponents.
_LOWEST, _HIGHEST = -104.0, 89.0

_registered = False


def fast_exp(call: tvm.ir.PrimExpr) -> tvm.ir.PrimExpr:
    """``tirx.exp(x)`` as arithmetic, for float32 ``x`` (scalar or vector); others unchanged.

    Parameters
    ----------
    call : PrimExpr
        The ``tirx.exp`` call.

    Returns
    -------
    PrimExpr
        The expression computing it (``call`` itself where ``x`` is not float32, which leaves
        it to TVM's own lowering).
    """
    x = call.args[0]
    dtype = tvm.DataType(str(x.ty))
    if dtype.type_code != tvm.DataTypeCode.FLOAT or dtype.bits != 32:
        return call
    suffix = f"x{dtype.lanes}" if dtype.lanes > 1 else ""
    floats, ints = f"float32{suffix}", f"int32{suffix}"

    def c(value: float) -> tvm.ir.PrimExpr:
        return tirx.const(value, floats)

    def power_of_two(exponent: tvm.ir.PrimExpr) -> tvm.ir.PrimExpr:
        biased = exponent + tirx.const(127, ints)
        return tirx.reinterpret(floats, tirx.shift_left(biased, tirx.const(23, ints)))

    clamped = tirx.min(tirx.max(x, c(_LOWEST)), c(_HIGHEST))
    n = tirx.floor(clamped * c(_LOG2E) + c(0.5))
    f = clamped - n * c(_LN2_HI) - n * c(_LN2_LO)
    p = c(_POLYNOMIAL[0])
    for coefficient in _POLYNOMIAL[1:]:
        p = p * f + c(coefficient)
    y = p * f * f + f + c(1.0)
    exponent = tirx.Cast(ints, n)  # in [-150, 129]: two halves stay normal float exponents
    half = tirx.shift_right(exponent, tirx.const(1, ints))
    result = y * power_of_two(half) * power_of_two(exponent - half)
    return tirx.Select(tirx.isnan(x), x, result)


def register() -> None:
    """Lower float32 ``tirx.exp`` with :func:`fast_exp` on llvm targets (once per process)."""
    global _registered
    if not _registered:
        tirx.op.register_intrin_lowering("tirx.exp", target="llvm", f=fast_exp, level=100)
        _registered = True
