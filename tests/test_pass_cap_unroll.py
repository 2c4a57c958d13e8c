"""CapUnroll: tuned unroll annotations above the cap are lowered to it, the rest kept."""

from __future__ import annotations

import pytest
import tvm
from tvm.script import ir as I
from tvm.script import tirx as T

from compile.passes import CapUnroll


def _module(outer: int, inner: int) -> tvm.IRModule:
    @I.ir_module
    class Module:
        @T.prim_func(s_tir=True)
        def add_one(A: T.Buffer((64, 64), "float32"), B: T.Buffer((64, 64), "float32")):
            T.func_attr({"tirx.noalias": True})
            for i in T.serial(64, annotations={"pragma_auto_unroll_max_step": outer,
                                               "pragma_unroll_explicit": 1}):
                for j in T.serial(64, annotations={"pragma_auto_unroll_max_step": inner,
                                                   "pragma_unroll_explicit": 1}):
                    with T.sblock("B"):
                        vi, vj = T.axis.remap("SS", [i, j])
                        B[vi, vj] = A[vi, vj] + T.float32(1)

    return Module


def test_caps_only_what_is_above():
    after = CapUnroll(64)(_module(512, 16))
    tvm.ir.assert_structural_equal(after, _module(64, 16))


def test_nothing_above_the_cap_returns_the_module():
    before = _module(64, 16)
    assert CapUnroll(64)(before).same_as(before)


def test_capped_code_is_smaller_and_computes_the_same():
    import numpy as np

    sizes, outputs = [], []
    x = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    for mod in (_module(512, 512), CapUnroll(0)(_module(512, 512))):
        lib = tvm.compile(mod, target="llvm")
        out = tvm.runtime.tensor(np.zeros_like(x))
        lib["add_one"](tvm.runtime.tensor(x), out)
        outputs.append(out.numpy())
        sizes.append(len(lib.mod.inspect_source("ll")))
    np.testing.assert_array_equal(outputs[0], x + 1)
    np.testing.assert_array_equal(outputs[1], x + 1)
    assert sizes[1] < sizes[0]


def test_negative_cap_is_refused():
    with pytest.raises(ValueError, match="max_steps"):
        CapUnroll(-1)


def test_tuning_builds_candidates_with_the_compile_jobs_cap():
    """Candidates are timed as the compile job builds them: capped when the target caps."""
    from compile.ms_worker import build_candidate, candidate_module
    from compile.tuning import _builder
    from tests.conftest import compose

    capped = candidate_module(_module(512, 16), 64)
    tvm.ir.assert_structural_equal(capped, _module(64, 16))
    tvm.ir.assert_structural_equal(candidate_module(_module(512, 16), None), _module(512, 16))

    job = compose("model=mobilenet_v2", "target.max_unroll_steps=0")
    build = _builder(job)
    assert build.func is build_candidate and build.keywords == {"max_unroll_steps": 0}
    lib = build(_module(512, 512), tvm.target.Target("llvm"), None)
    assert len(lib.inspect_source("ll")) < len(tvm.compile(_module(512, 512), target="llvm")
                                               .mod.inspect_source("ll"))
    # GPU kernels are built without the cap, so their candidates are too.
    gpu = compose("model=mobilenet_v2", "target=cuda_sm80", "target.max_unroll_steps=0")
    assert _builder(gpu).keywords == {"max_unroll_steps": None}
