"""NHWC convolutions on CPU: ClipToMaxMin (Before/Expected), the pipeline, the compile job."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm import relax, topi
from tvm.script import ir as I
from tvm.script import relax as R

from compile import _tvm
from compile.config import Layout, QuantScheme
from compile.errors import ConfigError
from compile.passes import ClipToMaxMin
from compile.pipeline import count_layout_transposes, graph_passes, preparation_pipeline

from . import models
from .conftest import compose

SHAPE = (1, 4, 8, 8)


def _imported_clip(lo, hi, bound_param: bool = False) -> tvm.IRModule:
    """Clip as TVM's ONNX importer emits it: call_tir of TE maximum, then minimum."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor(SHAPE, "float32"))
    params = [x]
    if bound_param:
        lo = relax.Var("lo", R.Tensor((), "float32"))
        params.append(lo)
    with bb.function("main", params):
        with bb.dataflow():
            low = bb.emit_te(topi.maximum, x, lo)
            high = bb.emit_te(topi.minimum, low, hi)
            out = bb.emit_output(high)
        bb.emit_func_output(out)
    return bb.get()


def _rewrite(mod: tvm.IRModule) -> tvm.IRModule:
    return relax.transform.DeadCodeElimination()(ClipToMaxMin()(mod))


ZERO = np.zeros((1, 1, 1, 1), np.float32)
SIX = np.full((1, 1, 1, 1), 6.0, np.float32)


@I.ir_module
class ClipExpected:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32")) -> R.Tensor((1, 4, 8, 8), "float32"):
        with R.dataflow():
            low = R.maximum(x, R.const(ZERO))
            high = R.minimum(low, R.const(SIX))
            out = high  # the importer's output binding stays (CanonicalizeBindings removes it)
            R.output(out)
        return out


def test_clip_becomes_relax_maximum_minimum():
    before = _imported_clip(relax.const(np.float32(0)), relax.const(np.float32(6)))
    tvm.ir.assert_structural_equal(_rewrite(before), ClipExpected)


def test_bounds_that_are_not_constants_are_left():
    before = _imported_clip(None, relax.const(np.float32(6)), bound_param=True)
    after = ClipToMaxMin()(before)
    names = [gv.name_hint for gv, f in after.functions.items() if isinstance(f, _tvm.PrimFunc)]
    assert "maximum" in names  # the call_tir with a parameter bound stays
    assert "minimum" not in [gv.name_hint for gv, f in _rewrite(before).functions.items()]


def test_other_call_tir_untouched():
    bb = relax.BlockBuilder()
    x = relax.Var("x", R.Tensor(SHAPE, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit_te(topi.add, x, relax.const(np.float32(1))))
        bb.emit_func_output(out)
    before = bb.get()
    assert ClipToMaxMin()(before).same_as(before)


@I.ir_module
class RelaxClip:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 1, 1), "float32")):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            out = R.clip(y, R.prim_value(0), R.prim_value(6))
            R.output(out)
        return out


@I.ir_module
class RelaxClipExpected:
    @R.function
    def main(x: R.Tensor((1, 4, 8, 8), "float32"), w: R.Tensor((4, 4, 1, 1), "float32")):
        with R.dataflow():
            y = R.nn.conv2d(x, w)
            out = R.minimum(R.maximum(y, R.const(ZERO)), R.const(SIX))
            R.output(out)
        return out


def test_relax_clip_with_prim_bounds_for_mixed_precision():
    # TVM 0.27's ToMixedPrecision fails on relax.clip (PrimValue bounds); the fp16 pipeline
    # rewrites it, the CPU pipelines (prim_bounds=False) leave it for their tuned records.
    with pytest.raises(tvm.error.InternalError, match="Expected TensorType"):
        relax.transform.ToMixedPrecision(out_dtype="float32")(RelaxClip)
    assert ClipToMaxMin()(RelaxClip).same_as(RelaxClip)
    after = ClipToMaxMin(prim_bounds=True)(RelaxClip)
    tvm.ir.assert_structural_equal(after, RelaxClipExpected)
    mixed = relax.transform.ToMixedPrecision(out_dtype="float32")(after)
    assert '"float16"' in mixed.script()  # the convolution now computes in half


def test_a_failing_tvm_pass_is_an_unsupported_model_error():
    from compile.errors import UnsupportedModelError
    from compile.pipeline import Pipeline

    pipeline = Pipeline("gpu-fp16", (("graph", (relax.transform.ToMixedPrecision("float32"),)),))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    with pytest.raises(UnsupportedModelError, match="graph passes of the gpu-fp16 pipeline "
                       "failed on this model .*Expected TensorType.*quant=none"):
        pipeline.run(RelaxClip, target)


def test_rewritten_clip_computes_the_same_bits():
    before = _imported_clip(relax.const(np.float32(-0.5)), relax.const(np.float32(6)))
    x = (np.random.default_rng(0).standard_normal(SHAPE) * 8).astype(np.float32)
    outputs = []
    for mod in (before, _rewrite(before)):
        vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(x)).numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[1], np.clip(x, -0.5, 6))


def test_nhwc_graph_transposes_only_at_the_edges():
    """Input to NHWC (twice: conv and residual), pooled output back: no transposes at Clips."""
    mod = _tvm.from_onnx(models.inverted_residual(), shape_dict={"x": [1, 8, 12, 12]})
    with tvm.target.Target("llvm"):
        nhwc = tvm.transform.Sequential(graph_passes(QuantScheme.none, Layout.NHWC))(mod)
        plain = tvm.transform.Sequential([
            relax.transform.FoldConstant(),
            relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})])(mod)
    assert count_layout_transposes(nhwc) == 3
    assert count_layout_transposes(plain) == 7  # without ClipToMaxMin: two per Clip


def test_nhwc_graph_keeps_transposed_convolutions_nchw_so_they_build():
    """conv2d -> conv2d_transpose (ppocr_det's upsampling head): TVM 0.27 legalizes transposed
    convolutions only in NCHW/IOHW; carried along in NHWC, the model did not build."""
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    up = rng.standard_normal((8, 4, 2, 2)).astype(np.float32)  # IOHW
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4, 8, 8], "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weights), padding=1))
            z = bb.emit(relax.op.nn.conv2d_transpose(y, relax.const(up), strides=2))
            out = bb.emit_output(z)
        bb.emit_func_output(out)
    mod = bb.get()
    with tvm.target.Target("llvm"):
        nhwc = tvm.transform.Sequential(graph_passes(QuantScheme.none, Layout.NHWC))(mod)
    data = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    outputs = []
    for module in (mod, nhwc):
        vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
        outputs.append(vm["main"](tvm.runtime.tensor(data)).numpy())
    np.testing.assert_allclose(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    assert "NHWC" in nhwc.script()  # the convolution itself is still channels last
    # Converted as well, it does not build; the build error names the operator, not TVM's
    # "# Metadata omitted" note that ends its message.
    from types import SimpleNamespace

    from compile.build import _compile
    from compile.errors import BuildError

    both = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    with pytest.raises(BuildError, match=r"cannot emit .*\(operator: nn\.conv2d_transpose\)$"):
        _compile(both, tvm.target.Target("llvm"), SimpleNamespace(name="x86_64"))


def test_nhwc_is_its_own_pipeline():
    nchw = compose("target=x86_64", "target.layout=NCHW").target
    nhwc = compose("target=x86_64", "target.layout=NHWC").target
    assert preparation_pipeline(nhwc).name == "cpu-none-nhwc"
    assert preparation_pipeline(nchw).name == "cpu-none"
    assert preparation_pipeline(nhwc).fingerprint != preparation_pipeline(nchw).fingerprint
    assert "ClipToMaxMin" not in preparation_pipeline(nchw).pass_names


def test_nhwc_compile_job_matches_onnx_runtime(tiny_dir, job_for):
    from compile.job import run_compile

    result = run_compile(job_for(tiny_dir / "inverted_residual.onnx", "target.layout=NHWC"))
    assert result.artifact_dir.name == "nhwc"
    assert result.verification["status"] == "passed"
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert manifest["pipeline"]["layout"] == "NHWC"
    assert manifest["pipeline"]["name"] == "cpu-none-nhwc"
    assert "ConvertLayout" in manifest["pipeline"]["passes"]
    assert result.metrics["layout_transposes"] == 3


def _auto(tmp_path, *overrides):
    """The layout (and its reason) x86_64's ``layout: auto`` takes for mobilenet_v2."""
    from compile.prepare import resolve_layout

    job = compose("model=mobilenet_v2", f"paths.tune_logs_dir={tmp_path}", *overrides)
    resolved, note = resolve_layout(job)
    return resolved.target.layout, note


def _database(folder, pipeline: str, mcpu: str | None = None) -> str:
    from compile.targets import host_cpu
    from compile.tuning_db import write_provenance

    folder.mkdir(parents=True)
    write_provenance(folder, {"pipeline": pipeline,
                              "target": {"kind": "llvm", "mcpu": mcpu or host_cpu()}})
    return str(folder)


def test_auto_layout_is_nhwc_for_int8_and_nchw_for_the_rest(tmp_path):
    assert compose("target=x86_64").target.layout == Layout.auto
    assert _auto(tmp_path) == (Layout.NCHW, "target.layout=auto: NCHW (as imported; no tuning "
                                            "database)")
    layout, note = _auto(tmp_path, "quant=int8")
    assert layout == Layout.NHWC and "packed channels-last; no tuning database" in note
    assert _auto(tmp_path, "quant=int8", "target.layout=NCHW") == (Layout.NCHW, None)
    assert _auto(tmp_path, "target.layout=NHWC") == (Layout.NHWC, None)
    assert _auto(tmp_path, "target=cuda_sm80", "target.layout=auto")[0] == Layout.NCHW
    with pytest.raises(ValueError, match="choose the layout first"):
        preparation_pipeline(compose("target=x86_64").target)
    from compile.prepare import prepare_model

    job = compose("target=x86_64")  # unresolved: refused before any fetch or import
    with pytest.raises(ValueError, match="resolve the job's layout first"):
        prepare_model(job.model, job.target, job.quant, job.paths)


def test_auto_layout_takes_nchw_where_only_nchw_has_a_database(tmp_path):
    """A CPU whose int8 database is NCHW's (Zen 3, tune_logs/mobilenet_v2/x86_64/int8) keeps
    it; once NHWC has one too, NHWC wins; without applying databases NHWC is taken."""
    nchw = _database(tmp_path / "mobilenet_v2" / "x86_64" / "int8", "cpu-int8")
    layout, note = _auto(tmp_path, "quant=int8")
    assert layout == Layout.NCHW and "only tuning database for quant=int8" in note
    assert nchw in note or "x86_64/int8)" in note
    assert _auto(tmp_path, "quant=int8", "tuning.apply=false")[0] == Layout.NHWC
    assert _auto(tmp_path, "quant=int8", f"tuning.database={nchw}")[0] == Layout.NCHW
    nhwc = _database(tmp_path / "mobilenet_v2" / "x86_64" / "int8" / "nhwc", "cpu-int8-nhwc")
    assert _auto(tmp_path, "quant=int8")[0] == Layout.NHWC
    assert _auto(tmp_path, "quant=int8", f"tuning.database={nchw}")[0] == Layout.NCHW
    assert _auto(tmp_path, "quant=int8", f"tuning.database={nhwc}")[0] == Layout.NHWC


def test_auto_layout_for_float32_takes_the_database_that_uses_more_of_this_cpu(tmp_path):
    """float32: NCHW, unless NHWC's database was tuned on a CPU with more of this one's
    instruction sets (on a Xeon: mobilenet_v2's Zen 5 NHWC database, AVX-512, against the
    Zen 3 NCHW one, AVX2; 3.89 against 7.93 ms). Ties stay NCHW."""
    from compile.targets import host_cpu

    base = tmp_path / "mobilenet_v2"
    _database(base / "x86_64", "cpu-none", mcpu="x86-64")  # baseline x86-64: this CPU runs it
    assert _auto(tmp_path)[0] == Layout.NCHW
    _database(base / "x86_64-other" / "nhwc", "cpu-none-nhwc", mcpu="x86-64-v3")
    layout, note = _auto(tmp_path)
    assert layout == Layout.NHWC
    assert "uses more of this CPU: x86-64-v3 against NCHW's x86-64" in note
    assert "x86_64-other/nhwc" in note
    _database(base / f"x86_64-{host_cpu()}", "cpu-none")  # tuned here: NCHW again
    assert _auto(tmp_path) == (Layout.NCHW, "target.layout=auto: NCHW (as imported; tuning "
                               f"database {base / f'x86_64-{host_cpu()}'})")
    _database(base / f"x86_64-{host_cpu()}" / "nhwc", "cpu-none-nhwc")  # a tie
    assert _auto(tmp_path)[0] == Layout.NCHW
    assert _auto(tmp_path, "tuning.apply=false")[0] == Layout.NCHW


def test_auto_layout_for_float32_takes_nhwc_where_only_nhwc_has_a_database(tmp_path):
    _database(tmp_path / "mobilenet_v2" / "x86_64" / "nhwc", "cpu-none-nhwc")
    layout, note = _auto(tmp_path)
    assert layout == Layout.NHWC and "the only tuning database" in note
    assert _auto(tmp_path, "target=cuda_sm80", "target.layout=auto")[0] == Layout.NCHW


def test_nhwc_needs_a_cpu_target():
    with pytest.raises(ConfigError, match="target.layout=NHWC is for CPU"):
        compose("target=cuda_sm80", "target.layout=NHWC")


@pytest.mark.parametrize("activations", ["uint8", "int16"])
def test_int8_compile_job_in_nhwc_matches_onnx_runtime(tiny_dir, job_for, tmp_path, activations):
    """quant=int8 with NHWC: integer kernels channels last, 1x1 convolutions packed (16-bit
    activations: on AVX-512 VNNI's vpdpwssd forms, 16 lanes for the 8 -> 16 channel
    convolution and 8 for the 16 -> 8 one)."""
    from compile.intrinsics import (
        AVX512_CHANNEL_DOT_I16_8x2,
        AVX512_CHANNEL_DOT_I16_16x2,
        channel_intrinsics,
    )
    from compile.job import run_compile
    from compile.targets import host_cpu

    for name, seed, count in (("cal", 0, 16), ("val", 1, 8)):
        rng = np.random.default_rng(seed)
        np.savez(tmp_path / f"{name}.npz",
                 x=rng.uniform(-1, 1, (count, 1, 8, 12, 12)).astype("f4"))
    result = run_compile(job_for(
        tiny_dir / "inverted_residual.onnx", "target.layout=NHWC", "quant=int8",
        f"quant.activation_type={activations}", f"quant.reduce_range={activations == 'uint8'}",
        "quant.max_drop=0.1", "quant.calibration.source=npz",
        f"quant.calibration.path={tmp_path}/cal.npz", "quant.validation.source=npz",
        f"quant.validation.path={tmp_path}/val.npz"))
    assert result.artifact_dir.name == "nhwc" and result.artifact_dir.parent.name == "int8"
    assert result.verification["status"] == "passed"  # cosine vs ONNX Runtime on the QDQ model
    manifest = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert manifest["pipeline"]["name"] == "cpu-int8-nhwc"
    assert {"DecomposeQDQ", "PackPointwiseNHWC"} <= set(manifest["pipeline"]["passes"])
    assert result.metrics["layout_transposes"] == 3
    quant = manifest["quantization"]
    assert quant["integer_ops"] == 4  # three convolutions and the Gemm
    if activations == "int16":
        host = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
        wide = channel_intrinsics(host, 16) == [AVX512_CHANNEL_DOT_I16_16x2,
                                                AVX512_CHANNEL_DOT_I16_8x2]
        assert quant["packed_pointwise"] == (2 if wide else 0)  # 8 -> 16 and 16 -> 8
        if wide:
            assert quant["dot_intrinsic"] == (f"{AVX512_CHANNEL_DOT_I16_16x2} x1, "
                                              f"{AVX512_CHANNEL_DOT_I16_8x2} x1")
    elif quant["dot_intrinsic"]:  # x86 with AVX2 (7-bit weights: packed with or without VNNI)
        # 8 lanes, or 16 (AVX-512 VNNI) where the output channels divide
        assert quant["dot_intrinsic"].startswith(("channel_dot_8x4", "channel_dot_16x4"))
        assert quant["packed_pointwise"] == 2
