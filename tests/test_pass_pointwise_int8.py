"""Packed 1x1 int8 convolutions on the x86 dot intrinsics: rewrite, exactness, tensorizing."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compile.intrinsics import AVX2_DOT_8x4, VNNI_DOT_8x4, dot_intrinsic, saturation_free
from compile.passes import LowerQDQToInteger
from compile.passes.pointwise_int8 import dot_primfunc

ZEN3 = {"kind": "llvm", "mcpu": "znver3"}  # AVX2 and FMA, no AVX-512, no VNNI
ZEN4 = {"kind": "llvm", "mcpu": "znver4"}  # AVX-512 VNNI + VL: compiled here, never run
R = relax.op
RNG = np.random.default_rng(5)


def _qdq_pointwise(dtype: str, weights: np.ndarray, height: int = 6, width: int = 12):
    """quantize(relu(conv1x1(dequantize(x), dequantize(W)) + b)) with uint8 output."""
    out_ch, channels = weights.shape[:2]
    zero = 0 if dtype == "int8" else 110
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, channels, height, width], dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            dx = R.dequantize(x, relax.const(0.05, "float32"), relax.const(zero, dtype))
            dw = R.dequantize(relax.const(weights), relax.const(
                np.linspace(0.01, 0.03, out_ch).astype(np.float32)),
                relax.const(np.zeros(out_ch, np.int8)), axis=0)
            conv = R.nn.conv2d(dx, dw)
            bias = relax.const(RNG.uniform(-1, 1, (1, out_ch, 1, 1)).astype(np.float32))
            act = R.nn.relu(R.add(conv, bias))
            y = bb.emit(R.quantize(act, relax.const(0.08, "float32"), relax.const(3, "uint8"),
                                   out_dtype="uint8"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _weights(out_ch: int, channels: int, limit: int = 64) -> np.ndarray:
    return RNG.integers(-limit, limit + 1, (out_ch, channels, 1, 1)).astype(np.int8)


def _lower(mod, target):
    lower = LowerQDQToInteger()
    with tvm.target.Target(target):
        return lower(mod), lower


def _run(mod, x):
    target = tvm.target.Target(ZEN3)
    with target:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _calls(mod) -> list[str]:
    names = []

    def visit(expr):
        if isinstance(expr, relax.Call):
            if expr.op.name == "relax.call_tir":
                names.append(expr.args[0].name_hint)
            else:
                names.append(expr.op.name)

    relax.analysis.post_order_visit(mod["main"].body, visit)
    return names


@pytest.mark.parametrize(("dtype", "low", "high"), [("uint8", 0, 256), ("int8", -128, 128)])
def test_packed_convolution_is_identical_to_conv2d(dtype, low, high):
    before = _qdq_pointwise(dtype, _weights(16, 8))
    packed, lower = _lower(before, ZEN3)
    plain = LowerQDQToInteger()(before)  # no target: conv2d in integers
    assert (lower.packed, lower.saturating) == (1, 0)
    calls = _calls(packed)
    assert "relax.nn.conv2d" not in calls and "relax.nn.conv2d" in _calls(plain)
    assert any(c.startswith("int8_pack_") for c in calls)
    assert any(c.startswith("int8_pointwise_dot_") for c in calls)
    assert calls[-1] == "relax.strided_slice"  # 12 pixels per row, computed as 16
    x = RNG.integers(low, high, (1, 8, 6, 12)).astype(dtype)
    np.testing.assert_array_equal(_run(packed, x), _run(plain, x))


def _saturating_weights() -> np.ndarray:
    weights = _weights(16, 8)
    weights[3, 0:2, 0, 0] = [100, 90]  # 255 * 190 > 32767: vpmaddubsw would clamp
    return weights


def test_weights_that_could_saturate_stay_conv2d():
    packed, lower = _lower(_qdq_pointwise("uint8", _saturating_weights()), ZEN3)
    assert lower.intrinsic == AVX2_DOT_8x4
    assert (lower.packed, lower.saturating) == (0, 1)
    assert "relax.nn.conv2d" in _calls(packed)


def test_vnni_targets_pack_any_int8_weights():
    packed, lower = _lower(_qdq_pointwise("uint8", _saturating_weights()), ZEN4)
    assert lower.intrinsic == VNNI_DOT_8x4
    assert (lower.packed, lower.saturating) == (1, 0)
    assert "relax.nn.conv2d" not in _calls(packed)


@pytest.mark.parametrize(("target", "expected"), [
    (ZEN3, AVX2_DOT_8x4), (ZEN4, VNNI_DOT_8x4),
    ({"kind": "llvm", "mcpu": "alderlake"}, VNNI_DOT_8x4),  # AVX-VNNI without AVX-512
    ({"kind": "llvm", "mcpu": "skylake-avx512"}, AVX2_DOT_8x4),  # AVX-512 without VNNI
    ({"kind": "llvm", "mcpu": "ivybridge"}, None),  # AVX only
    ({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, None), ({"kind": "cuda"}, None)])
def test_dot_intrinsic_follows_the_cpu_features(target, expected):
    assert dot_intrinsic(tvm.target.Target(target)) == expected


def test_targets_without_avx2_keep_conv2d():
    _, lower = _lower(_qdq_pointwise("uint8", _weights(16, 8)),
                      {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    assert lower.packed == 0 and lower.rewritten == ["conv2d"]


def test_saturation_bound():
    assert saturation_free(np.array([[64, 64, -128, 0]], np.int8))  # 255 * 128 = 32640
    assert not saturation_free(np.array([[65, 64]], np.int8))  # 255 * 129 = 32895
    assert saturation_free(np.array([[127, -127]], np.int8))  # opposite signs never add up


def _tensorized(intrinsic: str, target: dict, channels: int, out_ch: int, height: int,
                width: int):
    """The packed dot product with its 8 x 4 tile tensorized by hand, compiled for target."""
    from tvm import s_tir

    sch = s_tir.Schedule(tvm.IRModule(
        {"main": dot_primfunc(1, channels, out_ch, height, width).with_attr("global_symbol",
                                                                              "main")}))
    block = sch.get_sblock("int8_pointwise_dot")
    _, o, h, p, c = sch.get_loops(block)
    c0, c1 = sch.split(c, [None, 4])
    p0, p1 = sch.split(p, [None, 8])
    sch.reorder(o, h, p0, c0, p1, c1)
    sch.decompose_reduction(block, c0)
    sch.tensorize(p1, intrinsic)
    return tvm.compile(sch.mod, target=tvm.target.Target(target))


def test_vnni_intrinsic_compiles_to_vpdpbusd():
    # This CPU has no VNNI: the kernel is compiled for Zen 4, checked in assembly, not run.
    asm = _tensorized(VNNI_DOT_8x4, ZEN4, 32, 16, 2, 16).mod.inspect_source("asm")
    assert "vpdpbusd" in asm and "vpmaddubsw" not in asm


def test_intrinsic_computes_the_dot_product_with_vpmaddubsw():
    channels, out_ch, height, width = 32, 16, 2, 16
    lib = _tensorized(AVX2_DOT_8x4, ZEN3, channels, out_ch, height, width)
    assert "vpmaddubsw" in lib.mod.inspect_source("asm")
    x = RNG.integers(0, 256, (channels, height, width)).astype(np.uint8)
    w = RNG.integers(-64, 65, (out_ch, channels)).astype(np.int8)
    # xp[n, h, w // 8, c // 4, w % 8, c % 4]
    packed = x.reshape(channels // 4, 4, height, width // 8, 8).transpose(2, 3, 0, 4, 1)[None]
    out = tvm.runtime.tensor(np.zeros((1, out_ch, height, width), np.int32))
    lib["main"](tvm.runtime.tensor(np.ascontiguousarray(packed)), tvm.runtime.tensor(w), out)
    np.testing.assert_array_equal(out.numpy()[0],
                                  np.einsum("oc,chw->ohw", w.astype(np.int64), x.astype(np.int64)))


def test_search_space_tensorizes_packed_kernels():
    from compile._tvm import ms
    from compile.tuning import search_space, task_intrinsic

    func = dot_primfunc(1, 32, 16, 2, 16)
    name = "fused_int8_pointwise_dot_c32_o16_h2_w16_add"
    assert task_intrinsic("fused_conv2d_add", tvm.target.Target(ZEN3)) is None
    assert search_space(None) == "post-order-apply"
    for target, intrinsic in ((ZEN3, AVX2_DOT_8x4), (ZEN4, VNNI_DOT_8x4)):
        target = tvm.target.Target({**target, "num-cores": 2})
        assert task_intrinsic(name, target) == intrinsic
        context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                                 space_generator=search_space(intrinsic))
        traces = [str(s.trace) for s in context.generate_design_space()]
        assert any(intrinsic in t for t in traces)
