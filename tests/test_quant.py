"""quant=int8 in the compile job: calibration data checks, the accuracy gate, the manifest."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from compile.accuracy import GateResult
from compile.datasets import load_samples
from compile.errors import ConfigError, QuantizationError
from compile.job import run_compile
from compile.quantize import quantize
from runner import TensorSpec
from runner.manifest import read_manifest

from . import models
from .conftest import assert_one_line_error, compose, run_cli


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """Calibration and validation arrays for conv_bn_relu (input x [1, 3, 16, 16])."""
    folder = tmp_path_factory.mktemp("npz")
    for name, seed, count in (("cal", 0, 32), ("val", 1, 12)):
        rng = np.random.default_rng(seed)
        np.savez(folder / f"{name}.npz", x=rng.uniform(-1, 1, (count, 1, 3, 16, 16)).astype("f4"))
    return folder


def int8_overrides(npz_dir, *extra):
    return ["quant=int8", "quant.calibration.source=npz",
            f"quant.calibration.path={npz_dir}/cal.npz",
            "quant.validation.source=npz", f"quant.validation.path={npz_dir}/val.npz", *extra]


@pytest.mark.parametrize(("calibrator", "activations", "layout"), [
    ("nncf", "uint8", "auto"), ("onnxruntime", "uint8", "NCHW"), ("nncf", "int16", "auto")])
def test_int8_artifact_verified_and_described(tiny_dir, job_for, npz, calibrator, activations,
                                              layout, tmp_path):
    """x86_64's default layout (auto) is NHWC for quant=int8 (compile.prepare.choose_layout)."""
    import mlflow

    from compile.tracking import tracked_run

    margin = ["quant.activation_margin=2"] if activations == "int16" else []
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job = job_for(tiny_dir / "conv_bn_relu.onnx",
                  *int8_overrides(npz, f"quant.calibrator={calibrator}", "quant.max_drop=0.05",
                                  f"quant.activation_type={activations}", *margin),
                  "tracking.enabled=true", f"tracking.uri={uri}", f"target.layout={layout}")
    with tracked_run(job.tracking, "compile/conv_bn_relu") as tracker:
        result = run_compile(job, tracker)
    run = mlflow.MlflowClient(uri).get_run(result.run_id)
    assert run.data.params["quant.weight_rounding"] == ("gptq" if margin else "nearest")
    assert (0 < run.data.metrics.get("gptq_output_error_ratio", 0) < 1) == bool(margin)
    nhwc = layout == "auto"
    assert run.data.params["target.layout"] == ("NHWC" if nhwc else "NCHW")
    assert result.layout.startswith("target.layout=auto: NHWC" if nhwc else "NCHW")
    folder = result.artifact_dir.parent if nhwc else result.artifact_dir
    assert (result.artifact_dir.name == "nhwc") == nhwc
    assert folder.name == "int8" and folder.parent.name == "x86_64"
    assert read_manifest(result.artifact_dir)["pipeline"]["layout"] == ("NHWC" if nhwc else "NCHW")
    assert result.verification["status"] == "passed"
    assert result.verification["min_cosine"] >= 0.98
    quant = read_manifest(result.artifact_dir)["quantization"]
    assert quant["scheme"] == "int8" and quant["integer_ops"] == 2
    assert quant["settings"]["calibrator"] == calibrator
    assert quant["settings"]["activation_type"] == activations
    assert quant["settings"]["activation_margin"] == (2.0 if margin else None)
    # 16-bit activations default to GPTQ-rounded weights (tests/test_weight_rounding.py)
    assert quant["weight_rounding"]["method"] == ("gptq" if margin else "nearest")
    assert quant["gate"]["passed"] and quant["gate"]["metric"] == "cosine"
    assert "32 samples" in quant["calibration"] and "12 samples" in quant["gate"]["validation"]
    # bf16-rounded weights perturb far less than int8: cosine nearer 1 than the int8 artifact's
    assert 1 - quant["gate"]["drop"] < quant["gate"]["bf16_weights_cosine"] <= 1.0


def test_gate_fails_with_too_strict_threshold(tiny_dir, job_for, npz, tmp_path):
    job = job_for(tiny_dir / "conv_bn_relu.onnx", *int8_overrides(npz, "quant.max_drop=0.0"))
    with pytest.raises(QuantizationError,
                       match=r"accuracy gate failed: cosine drop .* rounded to bfloat16 alone: "
                             r"drop .* layers that hurt most .*Conv"):
        run_compile(job)
    assert not list((tmp_path / "art").rglob("manifest.json"))  # no artifact, staged or not
    assert not list((tmp_path / "art").rglob("*.stage-*"))


def test_gate_failure_cli_one_line(tiny_dir, npz, tmp_path):
    proc = run_cli("compile", "model=file", f"model.path={tiny_dir / 'conv_bn_relu.onnx'}",
                   *int8_overrides(npz, "quant.max_drop=0.0"), f"paths.artifacts_dir={tmp_path}",
                   "tracking=off")
    assert_one_line_error(proc, "accuracy gate failed", "keep_float_worst",
                          "quant.activation_type=int16")


@pytest.mark.parametrize("setup, needle", [
    (lambda d: {}, "needs path"),
    (lambda d: {"path": str(d / "missing.npz")}, "does not exist"),
    (lambda d: {"path": str(d / "wrong.npz")}, "samples of 'x' have shape [3, 8, 8]"),
    (lambda d: {"path": str(d / "empty.npz")}, "same number (>0)"),
    (lambda d: {"path": str(d / "other.npz")}, "no array for input(s) ['x']"),
])
def test_bad_calibration_data_fails_before_any_work(tiny_dir, job_for, tmp_path, setup, needle):
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 3, 8, 8), "f4"))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 1, 3, 16, 16), "f4"))
    np.savez(tmp_path / "other.npz", y=np.zeros((4, 1, 3, 16, 16), "f4"))
    path = setup(tmp_path).get("path")
    job = job_for(tiny_dir / "conv_bn_relu.onnx", "quant=int8", "quant.calibration.source=npz",
                  *([f"quant.calibration.path={path}"] if path else []))
    with pytest.raises(QuantizationError, match=re.escape(needle)):
        run_compile(job)


def test_model_without_task_needs_calibration_data(tiny_dir, job_for):
    job = job_for(tiny_dir / "conv_bn_relu.onnx", "quant=int8")
    with pytest.raises(QuantizationError, match="source=npz"):
        run_compile(job)


def test_nothing_to_quantize_is_said(tmp_path, job_for, npz):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "x"], ["y"])],
        "no_weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 16, 16])])
    path = models.save(models.finish(graph), tmp_path, "no_weights")
    with pytest.raises(QuantizationError, match="nothing to quantize"):
        run_compile(job_for(path, *int8_overrides(npz)))


@pytest.mark.parametrize("override", ["quant.max_drop=1.5", "quant.max_drop=-0.1"])
def test_max_drop_out_of_range(override):
    with pytest.raises(ConfigError, match="max_drop"):
        compose("model=ppocr_cls", "quant=int8", override)


@pytest.mark.parametrize("overrides", [
    ["quant.activation_type=int4"],
    ["quant.activation_margin=2"],  # with 8-bit activations
    ["quant.activation_type=int16", "quant.activation_margin=0.5"],
    ["quant.activation_type=int16", "quant.calibrator=onnxruntime"]])
def test_bad_activation_settings(overrides):
    with pytest.raises(ConfigError, match="quant.activation_"):
        compose("model=ppocr_cls", "quant=int8", *overrides)


def test_fp16_is_for_cuda_and_bf16_is_refused(tiny_dir, job_for):
    with pytest.raises(ConfigError, match="CUDA targets"):
        run_compile(job_for(tiny_dir / "conv_bn_relu.onnx", "quant=fp16"))
    with pytest.raises(ConfigError, match="float16 only"):
        run_compile(job_for(tiny_dir / "conv_bn_relu.onnx", "quant=bf16", "target=cuda_sm80"))


def test_fp16_cuda_build_has_half_kernels(tiny_dir, job_for, tmp_path):
    import shutil

    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not installed")
    dump = tmp_path / "ir"
    result = run_compile(job_for(tiny_dir / "matmul_gelu_layernorm.onnx", "quant=fp16",
                                 "target=cuda_sm80", f"dump_ir={dump}"))
    manifest = read_manifest(result.artifact_dir)
    assert result.artifact_dir.name == "fp16"
    assert manifest["quantization"]["scheme"] == "fp16"
    assert "ToMixedPrecision" in manifest["pipeline"]["passes"]
    assert manifest["library"]["device_code"]["format"] == "fatbin"
    fused = (dump / "03_fuse.py").read_text()
    assert 'matmul' in fused and '"float16"' in fused  # the matmul kernel computes in half
    assert json.dumps(manifest)


def test_fp16_graph_passes_take_every_clip():
    # PP-OCRv4 rec/det crashed ToMixedPrecision: the importer's Clip (call_tir of TE
    # maximum/minimum) and HardSwish/HardSigmoid (relax.clip with PrimValue bounds).
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    from compile.config import QuantScheme
    from compile.pipeline import graph_passes

    model = models.inverted_residual()
    graph = model.graph
    last = graph.node[-1]
    hard = helper.make_node("HardSwish", [last.output[0]], ["hs"])
    graph.node.append(hard)
    graph.output[0].name = "hs"
    mod = from_onnx(model)
    assert "R.clip" in mod.script() and "call_tir" in mod.script()
    mixed = tvm.transform.Sequential(graph_passes(QuantScheme.fp16))(mod)
    script = mixed.script()
    assert '"float16"' in script and "R.clip" not in script
    assert "R.maximum" in script and "R.minimum" in script


def test_gate_allows_a_drop_of_exactly_max_drop():
    # 4 of 200 lines differ: 1 - 0.98 is 0.020000000000000018 in binary floating point.
    assert GateResult({"match": 0.98}, 1.0 - 0.98, 0.02, 200, "match").passed
    assert not GateResult({"match": 0.975}, 1.0 - 0.975, 0.02, 200, "match").passed


def tiny_calibration(job, cache_dir):
    """conv_bn_relu's calibration set as the job describes it."""
    spec = TensorSpec("x", (1, 3, 16, 16), "float32")
    return load_samples(job.quant.calibration, job.model, [spec], cache_dir)


def test_opset_12_model_gets_per_channel_weights(tmp_path, job_for, npz):
    # QuantizeLinear has no axis before opset 13: the model is converted first, so the
    # weights are still quantized per output channel (per tensor wrecked PP-OCRv4 rec).
    model = models.conv_bn_relu()
    model.opset_import[0].version = 12
    job = job_for(tmp_path / "unused.onnx", *int8_overrides(npz))
    calibration = tiny_calibration(job, tmp_path)
    qdq = quantize(model, "0" * 64, job.quant, calibration, tmp_path, []).model
    initializers = {t.name: t for t in qdq.graph.initializer}
    weight_scales = [numpy_helper.to_array(initializers[n.input[1]]).size
                     for n in qdq.graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0] in initializers
                     and numpy_helper.to_array(initializers[n.input[0]]).ndim == 4]
    assert sorted(weight_scales) == [4, 8]  # one scale per output channel of each Conv


@pytest.mark.parametrize("override", ["quant.model_type=cnn"])
def test_unknown_model_type_is_a_config_error(override):
    with pytest.raises(ConfigError, match="model_type"):
        compose("model=ppocr_rec", "quant=int8", override)


@pytest.mark.parametrize("calibrator, method, extra", [
    ("nncf", "minmax", "quant.bias_correction=full"),
    ("nncf", "minmax", "quant.bias_correction=fast"),
    ("nncf", "minmax", "quant.bias_correction=none"), ("nncf", "percentile", ""),
    ("onnxruntime", "minmax", ""), ("onnxruntime", "percentile", ""),
    ("onnxruntime", "entropy", ""),
])
def test_every_calibration_method_quantizes(tmp_path, job_for, npz, calibrator, method, extra):
    # Each calibrator/method pair the config accepts must run (nncf 3.4 renamed its quantile
    # range estimator, which broke quant.method=percentile unnoticed).
    job = job_for(tmp_path / "unused.onnx", *int8_overrides(
        npz, f"quant.calibrator={calibrator}", f"quant.method={method}", *filter(None, [extra])))
    calibration = tiny_calibration(job, tmp_path)
    quantized = quantize(models.conv_bn_relu(), "0" * 64, job.quant, calibration, tmp_path, [])
    assert len(quantized.quantized) == 2 and quantized.settings["method"].lower() == method


def test_classification_gate_separates_near_ties():
    # Four samples: float32 sure on two (one flipped by int8), near a tie on two (one flipped).
    from compile.accuracy import evaluate
    from compile.config import Task
    from compile.datasets import SampleSet

    def logits(first, second, margin):
        z = np.zeros((1, 1000), np.float32)
        z[0, first], z[0, second] = margin, 0.1
        return z

    ref = [logits(1, 2, 8.0), logits(3, 4, 8.0), logits(5, 6, 0.12), logits(7, 8, 0.12)]
    ours = [logits(1, 2, 8.0), logits(4, 3, 8.0), logits(5, 6, 0.12), logits(8, 7, 0.12)]
    samples = SampleSet([{"i": np.array(i)} for i in range(4)], "four synthetic logits")
    bf16 = [ref[0], ref[1], ref[2], ours[3]]  # the rounded-weights model flips one near tie
    result = evaluate(Task.image_classification, lambda s: {"y": ours[int(s["i"])]},
                      lambda s: {"y": ref[int(s["i"])]}, samples, {}, max_drop=0.4,
                      run_bf16=lambda s: {"y": bf16[int(s["i"])]})
    assert result.metrics["bf16_weights_top1"] == 0.75
    assert result.metrics["top1"] == 0.5 and result.drop == 0.5 and not result.passed
    assert result.metrics["confident_share"] == 0.5
    assert result.metrics["top1_confident"] == 0.5
    assert [d["sample"] for d in result.disagreements] == [1, 3]


def test_recognition_gate_reports_edge_spaces_apart():
    # CTC outputs over the characters ["blank", "a", "b", " "]: float32 reads "ab" four times;
    # int8 reads "ab", "ab " (an edge space: no match, but a stripped match), "a b" and "b".
    from compile.accuracy import evaluate
    from compile.config import Task
    from compile.datasets import SampleSet

    def ctc(*indices):
        probs = np.zeros((1, len(indices), 4), np.float32)
        probs[0, np.arange(len(indices)), indices] = 1.0
        return probs

    ref = [ctc(1, 2, 0)] * 4
    ours = [ctc(1, 2, 0), ctc(1, 2, 3), ctc(1, 3, 2), ctc(0, 2, 0)]
    samples = SampleSet([{"i": np.array(i)} for i in range(4)], "four synthetic CTC outputs")
    result = evaluate(Task.text_recognition, lambda s: {"y": ours[int(s["i"])]},
                      lambda s: {"y": ref[int(s["i"])]}, samples, {"character": "a\nb"},
                      max_drop=0.5)
    assert result.metrics["match"] == 0.25 and result.drop == 0.75 and not result.passed
    assert result.metrics["match_stripped"] == 0.5
    assert [d["sample"] for d in result.disagreements] == [1, 2, 3]
    # Without a character dictionary the answers are argmax lists: stripping means nothing.
    bare = evaluate(Task.text_recognition, lambda s: {"y": ours[int(s["i"])]},
                    lambda s: {"y": ref[int(s["i"])]}, samples, {}, max_drop=0.5)
    assert bare.metrics["match_stripped"] == bare.metrics["match"] == 0.25


def test_bf16_weights_rounds_float_constants_only():
    from compile.accuracy import bf16_weights

    # 1 + 2**-8 is a tie between 1 and 1 + 2**-7 (8 significant bits): to even, 1.0;
    # 1 + 3 * 2**-8 rounds up to 1 + 2**-6.
    # Weights as an initializer and in a Constant node (as PaddlePaddle exports them).
    weights = np.array([1.00390625, 1.01171875, -3.14159265], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(weights, "c")),
         helper.make_node("Mul", ["x", "w"], ["xw"]), helper.make_node("Mul", ["xw", "c"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([7], np.int64), "shape")])
    model = helper.make_model(graph)
    rounded = bf16_weights(model)
    values = {i.name: numpy_helper.to_array(i) for i in rounded.graph.initializer}
    values["c"] = numpy_helper.to_array(rounded.graph.node[0].attribute[0].t)
    for name in ("w", "c"):
        np.testing.assert_array_equal(values[name], np.array([1.0, 1.015625, -3.140625], "f4"))
        assert values[name].dtype == np.float32
    assert values["shape"].tolist() == [7]
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]), weights)
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.node[0].attribute[0].t),
                                  weights)


def test_bias_correction_must_be_known():
    with pytest.raises(ConfigError, match="bias_correction"):
        compose("model=mobilenet_v2", "quant=int8", "quant.bias_correction=slow")


def test_cache_key_holds_only_what_the_calibrator_uses():
    from compile.quantize import settings

    def key(*overrides):
        return settings(compose("model=mobilenet_v2", "quant=int8", *overrides).quant, [])

    ort = "quant.calibrator=onnxruntime"
    assert key(ort, "quant.bias_correction=none") == key(ort, "quant.bias_correction=full")
    assert key(ort, "quant.reduce_range=true") != key(ort)
    assert key("quant.bias_correction=none") != key("quant.bias_correction=full")
    assert key("quant.reduce_range=true") != key()  # NNCF overflow_fix


def test_layer_report_ranks_the_layer_that_hurts(tmp_path, job_for, npz):
    # One calibration sample with an outlier makes Conv_0's input scale ~100x too coarse:
    # computing Conv_0 alone in float must recover the most output SQNR. The tiny model's nodes
    # are unnamed: they get names, the same in the float and the quantized model.
    from compile.datasets import SampleSet
    from compile.quantize import layer_report, worst_layers

    rng = np.random.default_rng(0)
    calibration = [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype("f4")} for _ in range(16)]
    calibration[0]["x"][0, 0, 0, 0] = 200.0
    validation = [{"x": rng.uniform(-1, 1, (1, 3, 16, 16)).astype("f4")} for _ in range(8)]
    job = job_for(tmp_path / "unused.onnx", *int8_overrides(npz))
    fp32 = models.conv_bn_relu()
    quantized = quantize(fp32, "1" * 64, job.quant, SampleSet(calibration, "outlier"), tmp_path,
                         [])
    report = layer_report(fp32, quantized.path, SampleSet(validation, "uniform"))
    assert [r["node"] for r in report] == ["Conv_0", "Conv_3"]
    assert report[0]["sensitivity_db"] > 3 > report[1]["sensitivity_db"]
    assert worst_layers(report, 1) == ["Conv_0"]


def test_keep_float_worst_retries_with_the_most_sensitive_layer(tiny_dir, job_for, npz,
                                                                 tmp_path):
    import mlflow

    model = tiny_dir / "conv_bn_relu.onnx"
    with pytest.raises(QuantizationError) as failed:
        run_compile(job_for(model, *int8_overrides(npz, "quant.max_drop=0.0")))
    worst = failed.value.worst_layers[0]
    drops = []
    for exclude in ([], [worst]):
        result = run_compile(job_for(model, *int8_overrides(
            npz, "quant.max_drop=1.0", f"quant.exclude={exclude}".replace("'", ""))))
        drops.append(result.quantization["gate"]["drop"])
    assert drops[1] < drops[0]  # the float layer helps: a threshold between the two separates
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("compile", "model=file", f"model.path={model}",
                   *int8_overrides(npz, f"quant.max_drop={(drops[0] + drops[1]) / 2}",
                                   "quant.keep_float_worst=1"),
                   f"paths.artifacts_dir={tmp_path}/art", f"tracking.uri={uri}",
                   "verify.bench_runs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "retrying with 1 layers in float" in proc.stdout + proc.stderr
    manifest = read_manifest(tmp_path / "art" / "conv_bn_relu" / "x86_64" / "int8" / "nhwc")
    assert manifest["quantization"]["kept_float"] == [worst]
    run_id = re.search(r"mlflow +run ([0-9a-f]{32})", proc.stdout).group(1)
    run = mlflow.MlflowClient(uri).get_run(run_id)
    assert run.data.params["quant.kept_float"] == str([worst])
    assert run.data.tags["attempt"] == "2"


def test_int16_activations_widen_the_8bit_model(tiny_dir, job_for, npz):
    """quant.activation_type=int16 (margin 4 by default) widens the cached 8-bit QDQ model,
    which benchmarks give ONNX Runtime's and OpenVINO's int8 kernels."""
    import onnx

    from compile.prepare import prepare_model, resolve_layout

    job, _ = resolve_layout(job_for(tiny_dir / "conv_bn_relu.onnx",
                                    *int8_overrides(npz, "quant.activation_type=int16")))
    quantized = prepare_model(job.model, job.target, job.quant, job.paths).quantized
    assert quantized.settings["activation_margin"] == 4.0
    assert quantized.int8_path != quantized.path

    def activation_zero_points(path):
        model = onnx.load(str(path))
        zero_points = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
        return {numpy_helper.to_array(i).dtype.name for i in model.graph.initializer
                if i.name in zero_points}

    assert "uint8" in activation_zero_points(quantized.int8_path) <= {"uint8", "int8"}
    assert activation_zero_points(quantized.path) <= {"int16", "uint16"}
