"""compile.fast_math: float32 exp lowered to vectorizable arithmetic on llvm targets."""

from __future__ import annotations

import re

import numpy as np
import pytest
import tvm
from tvm.script import tirx as T

from compile import _tvm
from compile.targets import build_target

N = 1 << 16


def _exp_module(dtype: str, lanes: int) -> tvm.IRModule:
    @T.prim_func(s_tir=True)
    def exp(a: T.Buffer((N,), dtype), b: T.Buffer((N,), dtype)):
        for i0 in range(N // lanes):
            for i1 in T.vectorized(lanes):
                with T.sblock("exp"):
                    v = T.axis.spatial(N, i0 * lanes + i1)
                    b[v] = T.exp(a[v])

    return tvm.IRModule({"main": exp})


def _build(dtype: str, lanes: int):
    target = build_target(_tvm.Target({"kind": "llvm", "mcpu": "znver3"}))
    return tvm.compile(_exp_module(dtype, lanes), target=target)


def _run(executable, x: np.ndarray) -> np.ndarray:
    out = tvm.runtime.tensor(np.zeros_like(x))
    executable.jit()["main"](tvm.runtime.tensor(x), out)
    return out.numpy()


#: (x, exp(x)) where the float32 result is exact: 1, overflow to inf, underflow to 0.
EXACT = [(0.0, 1.0), (-0.0, 1.0), (88.73, np.inf), (89.0, np.inf), (100.0, np.inf),
         (np.inf, np.inf), (-104.0, 0.0), (-110.0, 0.0), (-np.inf, 0.0)]
#: The exact cases, then results near the float32 limits (largest finite, subnormal), and NaN.
SPECIAL = [x for x, _ in EXACT] + [1e-8, -1e-8, 1.0, -1.0, 88.0, 88.72, 88.7228, -87.3, -88.0,
                                   -95.0, -103.0, -103.9, np.nan]


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(0)
    x = np.concatenate([SPECIAL, rng.uniform(-110.0, 95.0, N - len(SPECIAL) - 4096),
                        rng.uniform(-1.0, 1.0, 4096)]).astype(np.float32)
    return x


@pytest.mark.parametrize("lanes", [1, 16])
def test_float32_exp_within_two_ulp_of_the_exact_value(lanes):
    x = _inputs()
    got = _run(_build("float32", lanes), x)
    exact = np.exp(x.astype(np.float64))
    with np.errstate(over="ignore"):
        rounded = exact.astype(np.float32)  # the correctly rounded float32 result
    # Same class of result everywhere: NaN, infinity, zero.
    np.testing.assert_array_equal(np.isnan(got), np.isnan(rounded))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(rounded))
    np.testing.assert_array_equal(got == 0, rounded == 0)
    finite = np.isfinite(rounded)
    ulp = np.spacing(np.abs(rounded[finite])).astype(np.float64)
    error = np.abs(got[finite].astype(np.float64) - exact[finite]) / ulp
    assert error.max() <= 2.0, f"max error {error.max():.2f} ulp at x={x[finite][error.argmax()]}"
    np.testing.assert_array_equal(got[:len(EXACT)], [expected for _, expected in EXACT])


def _library_calls(executable) -> set[str]:
    """The C library functions the kernel calls (TVM's error reporting left out)."""
    calls = re.findall(r"call\w*\s+(\w+)@PLT", executable.mod.inspect_source("asm"))
    return {name for name in calls if not name.startswith("TVM")}


def test_float32_exp_calls_no_library_function():
    """TVM's own lowering is llvm.exp, which LLVM makes one call of expf per element."""
    executable = _build("float32", 16)
    assert _library_calls(executable) == set()
    assert re.search(r"vfmadd\w+ps\s+%[yz]mm", executable.mod.inspect_source("asm"))


def test_float64_exp_keeps_tvm_lowering():
    x = np.linspace(-700.0, 700.0, N)
    executable = _build("float64", 1)
    assert _library_calls(executable) == {"exp"}
    np.testing.assert_allclose(_run(executable, x), np.exp(x), rtol=1e-15)
