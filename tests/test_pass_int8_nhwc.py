"""int8 in NHWC: DecomposeQDQ, PackPointwiseNHWC, the channel dot intrinsics, the graph phase."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax

from compile import _tvm
from compile.config import Layout, QuantScheme
from compile.intrinsics import (
    INTRINSIC_LANES,
    INTRINSIC_REDUCE,
    REDUCE,
    AVX2_CHANNEL_DOT_8x4,
    AVX512_CHANNEL_DOT_16x4,
    AVX512_CHANNEL_DOT_I16_8x2,
    AVX512_CHANNEL_DOT_I16_16x2,
    VNNI_CHANNEL_DOT_8x4,
    channel_intrinsics,
    dot_intrinsic,
)
from compile.passes import DecomposeQDQ, PackPointwiseNHWC
from compile.passes.pack_pointwise_nhwc import (
    CHANNEL_CONV_PREFIX,
    CHANNEL_DOT_PREFIX,
    channel_conv_primfunc,
    channel_dot_primfunc,
)
from compile.pipeline import count_kernels, count_layout_transposes, graph_passes
from compile.targets import host_cpu

from .test_pass_pointwise_int8 import ZEN3, ZEN4, _calls, _run

R = relax.op
RNG = np.random.default_rng(11)


def _qdq_roundtrip(dtype: str, per_channel: bool) -> tvm.IRModule:
    """(quantize(x), dequantize(quantize(x))) for x float32 [1, 4, 5, 6], along axis 1."""
    info = np.iinfo(np.dtype(dtype))
    scale = (RNG.uniform(0.01, 0.1, 4) if per_channel else np.array(0.037)).astype(np.float32)
    zero = (RNG.integers(info.min, info.max, 4) if per_channel else np.array(17)).astype(dtype)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4, 5, 6], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            q = bb.emit(R.quantize(x, relax.const(scale), relax.const(zero), axis=1,
                                   out_dtype=dtype))
            d = bb.emit(R.dequantize(q, relax.const(scale), relax.const(zero), axis=1))
            out = bb.emit_output(relax.Tuple([q, d]))
        bb.emit_func_output(out)
    return bb.get()


def _run_all(mod, x) -> list[np.ndarray]:
    target = tvm.target.Target(ZEN3)
    with target:
        mod = relax.get_pipeline("zero")(mod)
    vm = relax.VirtualMachine(tvm.compile(mod, target), tvm.cpu())
    return [t.numpy() for t in vm["main"](tvm.runtime.tensor(x))]


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "int8"])
def test_decomposed_qdq_is_bit_identical_to_the_legalized_ops(dtype, per_channel):
    before = _qdq_roundtrip(dtype, per_channel)
    decompose = DecomposeQDQ()
    after = decompose(before)
    assert decompose.rewritten == 2
    assert not {"relax.quantize", "relax.dequantize"} & set(_calls(after))
    x = (RNG.standard_normal((1, 4, 5, 6)) * 5).astype(np.float32)
    # Rounding ties (half to even), saturation at both ends.
    x.flat[:6] = [0.5 * 0.037, 1.5 * 0.037, -0.5 * 0.037, 1e9, -1e9, 2.5 * 0.037]
    for got, want in zip(_run_all(after, x), _run_all(before, x), strict=True):
        np.testing.assert_array_equal(got, want)


def _nhwc_pointwise(dtype: str, weights: np.ndarray, height: int = 5, width: int = 7):
    """conv2d(x: dtype [1, H, W, C], W: int8 OHWI 1x1, out_dtype=int32) in NHWC."""
    channels = weights.shape[3]
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, height, width, channels], dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.nn.conv2d(x, relax.const(weights), data_layout="NHWC",
                                    kernel_layout="OHWI", out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _pack(mod, target):
    pack = PackPointwiseNHWC()
    with tvm.target.Target(target):
        return pack(mod), pack


@pytest.mark.parametrize(("dtype", "low", "high"), [("uint8", 0, 256), ("int8", -128, 128)])
def test_packed_nhwc_convolution_is_identical_to_conv2d(dtype, low, high):
    weights = RNG.integers(-64, 65, (16, 1, 1, 12)).astype(np.int8)  # 7-bit: AVX2 packs them
    before = _nhwc_pointwise(dtype, weights)
    packed, pack = _pack(before, ZEN3)
    assert (pack.intrinsic, pack.packed, pack.saturating) == (AVX2_CHANNEL_DOT_8x4, 1, 0)
    calls = _calls(packed)
    assert "relax.nn.conv2d" not in calls
    assert any(c.startswith(CHANNEL_DOT_PREFIX) for c in calls)
    x = RNG.integers(low, high, (1, 5, 7, 12)).astype(dtype)
    np.testing.assert_array_equal(_run(packed, x), _run(before, x))


@pytest.mark.parametrize(("dtype", "floor"), [("int8", -100), ("uint16", 1000)])
def test_shifted_input_with_a_residual_user_is_shifted_once_in_its_producer(dtype, floor):
    """y = max(x, floor) feeds a packed conv and a sum bound before it (as a residual add's
    dequantize comes before the convolution in ONNX order): y's kernel writes uint8(y + 128)
    (uint16: int16(y - 32768))."""
    weights = RNG.integers(-128, 128, (16, 1, 1, 12)).astype(np.int8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 5, 7, 12], dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.maximum(x, relax.const(np.dtype(dtype).type(floor))))
            total = bb.emit(R.sum(R.astype(y, "int32"), axis=3, keepdims=True))
            conv = bb.emit(R.nn.conv2d(y, relax.const(weights), data_layout="NHWC",
                                       kernel_layout="OHWI", out_dtype="int32"))
            out = bb.emit_output(R.add(conv, total))
        bb.emit_func_output(out)
    before = bb.get()
    packed, pack = _pack(before, ZEN4)
    assert pack.packed == 1

    def kernels(mod):
        mod = relax.transform.DeadCodeElimination()(mod)
        seq = [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
               relax.transform.FuseOps(), relax.transform.FuseTIR()]
        return count_kernels(tvm.transform.Sequential(seq)(mod))

    # Before: max, shift, dot (+ add), sum. After: max with the shift, dot (+ add), sum (of
    # y read back from the shifted tensor).
    assert kernels(_pack(before, ZEN4)[0]) == 3
    info = np.iinfo(np.dtype(dtype))
    x_value = RNG.integers(info.min, info.max + 1, (1, 5, 7, 12)).astype(dtype)
    np.testing.assert_array_equal(_run(packed, x_value), _run(before, x_value))


def test_nhwc_weights_that_could_saturate_stay_conv2d_without_vnni():
    weights = RNG.integers(-64, 65, (16, 1, 1, 12)).astype(np.int8)
    weights[3, 0, 0, 0:2] = [100, 90]  # 255 * 190 > 32767: vpmaddubsw would clamp
    _, pack = _pack(_nhwc_pointwise("uint8", weights), ZEN3)
    assert (pack.packed, pack.saturating) == (0, 1)
    _, pack = _pack(_nhwc_pointwise("uint8", weights), ZEN4)
    assert (pack.packed, pack.packed_by) == (1, {AVX512_CHANNEL_DOT_16x4: 1})


@pytest.mark.parametrize(("out_ch", "intrinsic", "lanes"), [
    (32, AVX512_CHANNEL_DOT_16x4, 16), (24, VNNI_CHANNEL_DOT_8x4, 8)])
def test_avx512_targets_pack_16_output_channels_where_they_divide(out_ch, intrinsic, lanes):
    weights = RNG.integers(-128, 128, (out_ch, 1, 1, 12)).astype(np.int8)
    packed, pack = _pack(_nhwc_pointwise("uint8", weights), ZEN4)
    assert pack.packed_by == {intrinsic: 1}
    dot = next(f for gv, f in packed.functions.items() if CHANNEL_DOT_PREFIX in gv.name_hint)
    assert [int(v) for v in dot.params[1].shape] == [out_ch // lanes, 3, lanes, 4]
    assert (f"{CHANNEL_DOT_PREFIX}16_" in str(packed)) == (lanes == 16)
    x = RNG.integers(0, 256, (1, 5, 7, 12)).astype(np.uint8)  # untuned loops: runs on AVX2
    np.testing.assert_array_equal(_run(packed, x), _run(_nhwc_pointwise("uint8", weights), x))


def _int8_matmul(dtype: str, weights: np.ndarray, lead: tuple = (1, 2, 3)):
    """matmul(x: dtype [..., M, K], W: int8 const [K, N], out_dtype=int32), as LowerQDQToInteger
    emits a quantized Gemm or ppocr_rec's CTC head ([1, 1, 40, 120] x [120, 6625])."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([*lead, weights.shape[0]], dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(R.matmul(x, relax.const(weights), out_dtype="int32"))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("lead", [(1, 2, 3), (1, 1, 6)])  # (1, 1, M): no reshapes
@pytest.mark.parametrize(("dtype", "low", "high"), [("uint8", 0, 256), ("int8", -128, 128)])
@pytest.mark.parametrize(("out_features", "intrinsic", "tiles"), [
    (32, AVX512_CHANNEL_DOT_16x4, 2), (24, VNNI_CHANNEL_DOT_8x4, 3)])
def test_packed_matmul_is_identical_to_the_integer_matmul(lead, dtype, low, high,
                                                         out_features, intrinsic, tiles):
    weights = RNG.integers(-128, 128, (12, out_features)).astype(np.int8)
    before = _int8_matmul(dtype, weights, lead)
    packed, pack = _pack(before, ZEN4)
    assert pack.packed_by == {intrinsic: 1}
    assert "relax.matmul" not in _calls(packed)
    dot = next(f for gv, f in packed.functions.items() if CHANNEL_DOT_PREFIX in gv.name_hint)
    assert [int(v) for v in dot.params[1].shape] == [tiles, 3, INTRINSIC_LANES[intrinsic], 4]
    assert ("relax.reshape" in _calls(packed)) == (lead != (1, 1, 6))
    x = RNG.integers(low, high, (*lead, 12)).astype(dtype)
    np.testing.assert_array_equal(_run(packed, x), _run(before, x))


@pytest.mark.parametrize(("k", "n", "lead"), [
    (10, 16, (1, 2, 3)),  # K not a multiple of 4
    (12, 21, (1, 2, 3)),  # N padded to whole tiles would add more than N / 8
    (12, 131, (1, 2, 3)),  # N paddable, but the rows of two matrices
    (12, 16, (1, 1))])  # one row: a matrix-vector product
def test_matmuls_the_packed_form_does_not_take_stay(k, n, lead):
    weights = RNG.integers(-128, 128, (k, n)).astype(np.int8)
    packed, pack = _pack(_int8_matmul("uint8", weights, lead), ZEN4)
    assert pack.packed == 0 and "relax.matmul" in _calls(packed)


@pytest.mark.parametrize("lead", [(1, 6), (1, 1, 6), (6,)])
@pytest.mark.parametrize(("dtype", "features", "lanes", "intrinsic"), [
    ("uint8", 131, 16, AVX512_CHANNEL_DOT_16x4),  # 144 = 9 tiles of 16
    ("int8", 50, 8, VNNI_CHANNEL_DOT_8x4),  # 56; 64 would add more than 50 / 8
    ("uint16", 131, 16, AVX512_CHANNEL_DOT_I16_16x2)])
def test_matmul_output_features_are_padded_to_whole_tiles_and_sliced(lead, dtype, features,
                                                                    lanes, intrinsic):
    """ppocr_rec's CTC head ([1, 40, 120] x [120, 6625]) in small: the weights padded with
    zero columns, the kernel returning the real columns of its padded product; bit-identical."""
    weights = RNG.integers(-128, 128, (12, features)).astype(np.int8)
    before = _int8_matmul(dtype, weights, lead)
    packed, pack = _pack(before, ZEN4)
    assert pack.packed_by == {intrinsic: 1}
    assert "relax.matmul" not in _calls(packed)
    gv, dot = next((gv, f) for gv, f in packed.functions.items()
                   if CHANNEL_DOT_PREFIX in gv.name_hint)
    padded = -(-features // lanes) * lanes
    assert gv.name_hint.endswith(f"_o{padded}_h1_w6_n{features}")
    assert [int(v) for v in dot.params[1].shape][::2] == [padded // lanes, lanes]
    assert [int(v) for v in dot.params[2].shape] == [*lead, features]  # no reshape after it
    assert "relax.reshape" not in _calls(packed) or lead != (1, 1, 6)
    info = np.iinfo(np.dtype(dtype))
    x = RNG.integers(info.min, info.max + 1, (*lead, 12)).astype(dtype)
    np.testing.assert_array_equal(_run(packed, x), _run(before, x))


@pytest.mark.parametrize("op", ["conv2d", "matmul"])
@pytest.mark.parametrize("dtype", ["int16", "uint16"])
@pytest.mark.parametrize(("out_channels", "lanes", "intrinsic"), [
    (32, 16, AVX512_CHANNEL_DOT_I16_16x2), (24, 8, AVX512_CHANNEL_DOT_I16_8x2)])
def test_16_bit_data_is_packed_for_vpdpwssd_with_identical_results(op, dtype, out_channels,
                                                                   lanes, intrinsic):
    """16-bit activations (quant.activation_type=int16): 16 lanes x 2 channels (8 lanes where
    16 does not divide the output channels), int8 weights; uint16 data shifted to
    int16(x - 32768). Results bit-identical, extremes included."""
    weights = RNG.integers(-128, 128, (out_channels, 1, 1, 12)).astype(np.int8)
    before = (_nhwc_pointwise(dtype, weights) if op == "conv2d"
              else _int8_matmul(dtype, np.ascontiguousarray(weights[:, 0, 0, :].T)))
    packed, pack = _pack(before, ZEN4)
    assert pack.packed_by == {intrinsic: 1}
    assert f"relax.{'nn.' if op == 'conv2d' else ''}{op}" not in _calls(packed)
    dot = next(f for gv, f in packed.functions.items() if CHANNEL_DOT_PREFIX in gv.name_hint)
    assert str(dot.params[0].ty.dtype) == "int16"
    assert [int(v) for v in dot.params[1].shape] == [out_channels // lanes, 6, lanes, 2]
    assert f"{CHANNEL_DOT_PREFIX}{lanes}x2_" in str(packed)
    info = np.iinfo(np.dtype(dtype))
    shape = [int(v) for v in before["main"].params[0].ty.shape]
    x = RNG.integers(info.min, info.max + 1, shape).astype(dtype)
    x.flat[:24] = [info.min] * 12 + [info.max] * 12
    np.testing.assert_array_equal(_run(packed, x), _run(before, x))
    # Without AVX-512 VNNI: no 16-bit form, left as it is.
    assert _pack(before, ZEN3)[1].packed == 0


def _nhwc_conv(dtype: str, weights: np.ndarray, size: tuple[int, int], strides, padding):
    """conv2d(x: dtype [1, H, W, C], W: int8 OHWI KxK, strides, padding, out_dtype=int32)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, *size, weights.shape[3]], dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(R.nn.conv2d(x, relax.const(weights), strides=strides, padding=padding,
                                    data_layout="NHWC", kernel_layout="OHWI",
                                    out_dtype="int32"))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize(("dtype", "channels", "out_channels", "target", "intrinsic", "lanes"), [
    ("int16", 3, 32, ZEN4, AVX512_CHANNEL_DOT_I16_16x2, 16),  # an image's first convolution
    ("uint16", 6, 24, ZEN4, AVX512_CHANNEL_DOT_I16_8x2, 8),   # stored as int16(x - 32768)
    ("int8", 8, 16, ZEN4, AVX512_CHANNEL_DOT_16x4, 16),       # stored as uint8(x + 128)
    ("uint8", 5, 8, ZEN3, AVX2_CHANNEL_DOT_8x4, 8)])
@pytest.mark.parametrize(("strides", "padding"), [((2, 2), (1, 1, 1, 1)), ((1, 1), (0, 1, 2, 0))])
def test_packed_kxk_convolution_is_identical_to_conv2d(dtype, channels, out_channels, target,
                                                       intrinsic, lanes, strides, padding):
    """3x3 convolutions, strided and padded (asymmetric too), on the same intrinsics: input
    channels padded to whole calls with zero weights, the padding written as ``pad`` with the
    value standing for zero in shifted storage. Results bit-identical, extremes included."""
    bound = 64 if target is ZEN3 else 128  # 7-bit weights: vpmaddubsw cannot saturate
    weights = RNG.integers(-bound, bound, (out_channels, 3, 3, channels)).astype(np.int8)
    before = _nhwc_conv(dtype, weights, (9, 11), strides, padding)
    packed, pack = _pack(before, target)
    assert pack.packed_by == {intrinsic: 1}
    calls = _calls(packed)
    assert "relax.nn.conv2d" not in calls and "relax.nn.pad" in calls
    conv = next(f for gv, f in packed.functions.items() if CHANNEL_CONV_PREFIX in gv.name_hint)
    reduce = INTRINSIC_REDUCE.get(intrinsic, REDUCE)
    assert [int(v) for v in conv.params[1].shape] == [
        out_channels // lanes, 3, 3, -(-channels // reduce), lanes, reduce]
    info = np.iinfo(np.dtype(dtype))
    x = RNG.integers(info.min, info.max + 1, (1, 9, 11, channels)).astype(dtype)
    x.flat[:2 * channels] = [info.min] * channels + [info.max] * channels
    np.testing.assert_array_equal(_run(packed, x), _run(before, x))


def test_strided_1x1_convolution_is_packed_as_a_convolution():
    """A 1x1 convolution of stride 2 (a residual network's downsampling shortcut)."""
    weights = RNG.integers(-128, 128, (16, 1, 1, 8)).astype(np.int8)
    before = _nhwc_conv("int8", weights, (9, 11), (2, 2), (0, 0, 0, 0))
    packed, pack = _pack(before, ZEN4)
    assert pack.packed_by == {AVX512_CHANNEL_DOT_16x4: 1}
    assert "relax.nn.pad" not in _calls(packed)
    assert any(CHANNEL_CONV_PREFIX in gv.name_hint for gv in packed.functions)
    x = RNG.integers(-128, 128, (1, 9, 11, 8)).astype(np.int8)
    np.testing.assert_array_equal(_run(packed, x), _run(before, x))


def test_nhwc_shapes_without_whole_tiles_stay_conv2d():
    weights = RNG.integers(-64, 65, (12, 1, 1, 12)).astype(np.int8)  # 12 outputs: not 8k
    packed, pack = _pack(_nhwc_pointwise("uint8", weights), ZEN3)
    assert pack.packed == 0 and "relax.nn.conv2d" in _calls(packed)


def test_channel_intrinsic_follows_the_cpu_features():
    assert dot_intrinsic(tvm.target.Target(ZEN3), channels=True) == AVX2_CHANNEL_DOT_8x4
    assert dot_intrinsic(tvm.target.Target(ZEN4), channels=True) == VNNI_CHANNEL_DOT_8x4
    assert channel_intrinsics(tvm.target.Target(ZEN4)) == [AVX512_CHANNEL_DOT_16x4,
                                                            VNNI_CHANNEL_DOT_8x4]
    assert channel_intrinsics(tvm.target.Target(ZEN3)) == [AVX2_CHANNEL_DOT_8x4]
    assert channel_intrinsics(tvm.target.Target(ZEN4), 16) == [AVX512_CHANNEL_DOT_I16_16x2,
                                                                AVX512_CHANNEL_DOT_I16_8x2]
    assert channel_intrinsics(tvm.target.Target(ZEN3), 16) == []
    avx_vnni = {"kind": "llvm", "mcpu": "alderlake"}  # AVX-VNNI (256-bit), no AVX-512
    assert channel_intrinsics(tvm.target.Target(avx_vnni)) == [VNNI_CHANNEL_DOT_8x4]
    assert channel_intrinsics(tvm.target.Target(avx_vnni), 16) == []  # VEX vpdpwssd: not built
    assert dot_intrinsic(tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}),
                         channels=True) is None


def _tensorized(intrinsic: str, target: dict, n_pixels: int, channels: int, out_ch: int):
    """The channel dot product with its 8 x 4 tile tensorized by hand, compiled for target."""
    from tvm import s_tir

    lanes, reduce = INTRINSIC_LANES[intrinsic], INTRINSIC_REDUCE.get(intrinsic, REDUCE)
    func = channel_dot_primfunc(1, 1, n_pixels, channels, out_ch, lanes, reduce)
    sch = s_tir.Schedule(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}))
    block = sch.get_sblock(CHANNEL_DOT_PREFIX)
    _, _, w, o, c = sch.get_loops(block)
    o0, o1 = sch.split(o, [None, lanes])
    c0, c1 = sch.split(c, [None, reduce])
    sch.reorder(w, o0, c0, o1, c1)
    sch.decompose_reduction(block, c0)
    sch.tensorize(o1, intrinsic)
    return tvm.compile(sch.mod, target=tvm.target.Target(target))


@pytest.mark.parametrize(("intrinsic", "target", "instruction"), [
    (AVX2_CHANNEL_DOT_8x4, ZEN3, "vpmaddubsw ymm"), (VNNI_CHANNEL_DOT_8x4, ZEN4, "vpdpbusd ymm"),
    (AVX512_CHANNEL_DOT_16x4, ZEN4, "vpdpbusd zmm"),
    (AVX512_CHANNEL_DOT_I16_16x2, ZEN4, "vpdpwssd zmm"),
    (AVX512_CHANNEL_DOT_I16_8x2, ZEN4, "vpdpwssd ymm")])
def test_channel_intrinsics_compute_the_dot_product(intrinsic, target, instruction):
    n_pixels, channels, out_ch = 6, 16, 32
    lib = _tensorized(intrinsic, target, n_pixels, channels, out_ch)
    name, register = instruction.split()
    lines = [line for line in lib.mod.inspect_source("asm").splitlines() if name in line]
    assert lines and all(f"%{register}" in line for line in lines)
    reduce = INTRINSIC_REDUCE.get(intrinsic, REDUCE)
    if intrinsic != AVX2_CHANNEL_DOT_8x4 and intrinsic not in channel_intrinsics(
            tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()}), 8 if reduce == REDUCE else 16):
        pytest.skip(f"this CPU cannot run {intrinsic}: checked in assembly only")
    from compile.passes.pack_pointwise_nhwc import pack_weights

    info = np.iinfo(np.uint8 if reduce == REDUCE else np.int16)
    x = RNG.integers(info.min, info.max + 1, (1, 1, n_pixels, channels)).astype(info.dtype)
    w = RNG.integers(-128, 128, (out_ch, channels)).astype(np.int8)
    if intrinsic == AVX2_CHANNEL_DOT_8x4:
        w = w // 2  # 7-bit: vpmaddubsw cannot saturate
    out = tvm.runtime.tensor(np.zeros((1, 1, n_pixels, out_ch), np.int32))
    lanes = INTRINSIC_LANES[intrinsic]
    lib["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(pack_weights(w, lanes, reduce)), out)
    np.testing.assert_array_equal(out.numpy()[0, 0],
                                  x[0, 0].astype(np.int64) @ w.T.astype(np.int64))


def test_search_space_tensorizes_channel_kernels():
    from compile._tvm import ms
    from compile.tuning import search_space, task_intrinsic

    for target, lanes, reduce, intrinsic in ((ZEN3, 8, 4, AVX2_CHANNEL_DOT_8x4),
                                             (ZEN4, 8, 4, VNNI_CHANNEL_DOT_8x4),
                                             (ZEN4, 16, 4, AVX512_CHANNEL_DOT_16x4),
                                             (ZEN4, 16, 2, AVX512_CHANNEL_DOT_I16_16x2),
                                             (ZEN4, 8, 2, AVX512_CHANNEL_DOT_I16_8x2)):
        func = channel_dot_primfunc(1, 4, 4, 16, 48, lanes, reduce)
        target = tvm.target.Target({**target, "num-cores": 2})
        tag = f"{lanes}x2" if reduce == 2 else {8: "", 16: "16"}[lanes]
        name = f"fused_{CHANNEL_DOT_PREFIX}{tag}_c16_o48_h4_w4_add"
        assert task_intrinsic(name, target) == intrinsic
        context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                                 space_generator=search_space(intrinsic))
        traces = [str(s.trace) for s in context.generate_design_space()]
        assert any(intrinsic in t for t in traces)
        # The other width never: it would repack the weights inside the kernel.
        other = {AVX512_CHANNEL_DOT_16x4, VNNI_CHANNEL_DOT_8x4, AVX2_CHANNEL_DOT_8x4,
                 AVX512_CHANNEL_DOT_I16_16x2, AVX512_CHANNEL_DOT_I16_8x2} - {intrinsic}
        assert not any(o in t for t in traces for o in other)


def test_search_space_tensorizes_kxk_convolutions():
    from compile._tvm import ms
    from compile.tuning import search_space, task_intrinsic

    target = tvm.target.Target({**ZEN4, "num-cores": 2})
    func = channel_conv_primfunc(1, 11, 11, 4, 32, (3, 3), (2, 2), 16, 2)
    name = f"fused_{CHANNEL_CONV_PREFIX}16x2_c3_o32_k3x3_s2x2_h5_w5_add"
    assert task_intrinsic(name, target) == AVX512_CHANNEL_DOT_I16_16x2
    context = ms.TuneContext(mod=tvm.IRModule({"main": func}), target=target,
                             space_generator=search_space(AVX512_CHANNEL_DOT_I16_16x2))
    assert any(AVX512_CHANNEL_DOT_I16_16x2 in str(s.trace)
               for s in context.generate_design_space())


def test_each_tuning_task_gets_the_space_of_its_own_intrinsic(tmp_path):
    """16- and 8-lane kernels of one module: one context per task, in order, each its width."""
    from compile._tvm import ms
    from compile.config import TuningConfig
    from compile.tuning import _tune_contexts, task_intrinsic

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 5, 7, 12], "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            convs = [bb.emit(R.nn.conv2d(
                x, relax.const(RNG.integers(-128, 128, (out_ch, 1, 1, 12)).astype(np.int8)),
                data_layout="NHWC", kernel_layout="OHWI", out_dtype="int32"))
                for out_ch in (24, 32, 16)]
            out = bb.emit_output(relax.Tuple(convs))
        bb.emit_func_output(out)
    target = tvm.target.Target({**ZEN4, "num-cores": 2})
    with target:
        mod = relax.transform.LegalizeOps()(PackPointwiseNHWC()(bb.get()))
    tasks = ms.relax_integration.extract_tasks(mod, target)
    intrinsics = [task_intrinsic(t.task_name, target) for t in tasks]
    assert sorted(intrinsics) == [AVX512_CHANNEL_DOT_16x4] * 2 + [VNNI_CHANNEL_DOT_8x4]
    contexts, weights = _tune_contexts(tasks, target, str(tmp_path), 1, TuningConfig())
    assert [c.task_name for c in contexts] == [t.task_name for t in tasks]
    assert weights == [float(t.weight) for t in tasks]
    for context, intrinsic in zip(contexts, intrinsics, strict=True):
        traces = [str(s.trace) for s in context.generate_design_space()]
        assert any(intrinsic in t for t in traces)


@pytest.fixture(scope="module")
def qdq_inverted_residual(tmp_path_factory):
    """tests.models.inverted_residual quantized by ONNX Runtime (QDQ, 7-bit per-channel weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    from . import models

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.uniform(-1, 1, (1, 8, 12, 12)).astype(np.float32)}
                                 for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    folder = tmp_path_factory.mktemp("qdq")
    models.save(models.inverted_residual(), folder, "fp32")
    quantize_static(folder / "fp32.onnx", folder / "int8.onnx", Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True)
    return onnx.load(folder / "int8.onnx")


def test_int8_nhwc_graph_keeps_the_layout_through_quantized_ops(qdq_inverted_residual):
    """QDQ MobileNetV2 block: integer convs, residual add and pooling all stay NHWC."""
    mod = _tvm.from_onnx(qdq_inverted_residual, shape_dict={"x": [1, 8, 12, 12]})
    with tvm.target.Target(ZEN3):
        passes = graph_passes(QuantScheme.int8, Layout.NHWC)
        nhwc = tvm.transform.Sequential(passes)(mod)
    calls = _calls(nhwc)
    assert count_layout_transposes(nhwc) == 3  # x into NHWC (conv, residual), pooled back
    assert not {"relax.quantize", "relax.dequantize", "relax.nn.pad", "relax.clip"} & set(calls)
    assert sum(c.startswith(CHANNEL_DOT_PREFIX) for c in calls) == 2  # both 1x1 convs
