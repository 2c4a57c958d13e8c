"""Import stage and tiny end-to-end builds compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from compile.config import ModelConfig
from compile.errors import ConfigError, UnsupportedModelError
from compile.importer import find_unsupported_ops, graph_sha256, import_model, load_onnx
from compile.job import run_compile
from compile.verify import ort_session, reference_outputs
from runner import load

from . import models
from .conftest import CACHE_DIR, assert_one_line_error, run_cli


@pytest.mark.parametrize("name", ["conv_bn_relu", "matmul_gelu_layernorm", "if_model"])
def test_tiny_model_matches_onnxruntime(tiny_dir, job_for, name):
    result = run_compile(job_for(tiny_dir / f"{name}.onnx"))
    assert result.verification["status"] == "passed", result.verification
    assert result.verification["max_abs_err"] < 1e-4
    assert result.kernels_after_fusion <= result.kernels_before_fusion
    # Independently of the job: load the artifact and compare with ORT on a fresh input.
    model = load(result.artifact_dir)
    spec = model.input_info[0]
    x = np.random.default_rng(7).uniform(-1, 1, spec.shape).astype(spec.dtype)
    ours = model.run({spec.name: x})
    ref = reference_outputs(ort_session(tiny_dir / f"{name}.onnx", 1), {spec.name: x})
    for key in ref:
        np.testing.assert_allclose(ours[key], ref[key], rtol=1e-4, atol=1e-5)


def test_fusion_reduces_kernels(tiny_dir, job_for):
    result = run_compile(job_for(tiny_dir / "conv_bn_relu.onnx"))
    # conv, bn (decomposed: several elementwise ops), relu, conv fuse into far fewer kernels.
    assert result.kernels_before_fusion >= 5
    assert result.kernels_after_fusion <= 3


def test_if_branches_both_match(tiny_dir, job_for):
    result = run_compile(job_for(tiny_dir / "if_model.onnx"))
    model = load(result.artifact_dir)
    for x in (np.full((1, 4), 0.5, np.float32), np.full((1, 4), -0.5, np.float32)):
        expected = np.maximum(2 * x, 0) if x.sum() > 0 else x - 1
        np.testing.assert_allclose(model.run({"x": x})["y"], expected, rtol=1e-6)


def test_unsupported_ops_listed_all_at_once_with_counts(tiny_dir):
    found = find_unsupported_ops(load_onnx(tiny_dir / "recurrent.onnx"))
    assert set(found) == {"LSTM", "GRU"}
    assert found["LSTM"] == {"main graph": 1}
    assert sum(found["GRU"].values()) == 1 and "main graph" not in found["GRU"]
    with pytest.raises(UnsupportedModelError) as err:
        import_model(tiny_dir / "recurrent.onnx", ModelConfig(name="r", path="x"))
    message = str(err.value)
    assert "GRU x1 (1 in subgraphs)" in message and "LSTM x1" in message


def test_corrupt_and_truncated_files(tmp_path, tiny_dir):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    truncated = tmp_path / "truncated.onnx"
    data = (tiny_dir / "conv_bn_relu.onnx").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    for path in (garbage, truncated):
        with pytest.raises(UnsupportedModelError, match="re-export|onnx.checker|empty graph"):
            load_onnx(path)


def test_the_shape_the_error_asks_for_is_a_working_override(tiny_dir, tmp_path):
    """Hydra refuses ``model.input_shapes={x:...}`` (a new key); the hint's ``++`` form works."""
    args = ["compile", "model=file", f"model.path={tiny_dir / 'dynamic_batch.onnx'}",
            "tracking=off", f"paths.artifacts_dir={tmp_path}", f"paths.cache_dir={CACHE_DIR}"]
    assert_one_line_error(run_cli(*args), "'++model.input_shapes={x:[...]}'")
    proc = run_cli(*args, "++model.input_shapes={x:[2,8,64]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "verify     passed" in proc.stdout


def test_dynamic_input_needs_a_shape(tiny_dir):
    cfg = ModelConfig(name="d", path=str(tiny_dir / "dynamic_batch.onnx"))
    with pytest.raises(ConfigError, match=r"model.input_shapes=\{x:\[\.\.\.\]\}"):
        import_model(tiny_dir / "dynamic_batch.onnx", cfg)
    cfg = ModelConfig(name="d", path="x", input_shapes={"x": [3, 8, 64]})
    imported = import_model(tiny_dir / "dynamic_batch.onnx", cfg)
    assert imported.inputs[0].shape == (3, 8, 64)
    assert imported.outputs[0].shape == (3, 8, 128)


def test_wrong_input_shapes_are_all_reported(tiny_dir):
    cfg = ModelConfig(name="c", path="x", input_shapes={"x": [1, 3, 8, 8], "nope": [1]})
    with pytest.raises(ConfigError) as err:
        import_model(tiny_dir / "conv_bn_relu.onnx", cfg)
    assert "nope" in str(err.value) and "[1, 3, 16, 16]" in str(err.value)


def test_op_histogram_counts_subgraphs():
    from compile.importer import op_histogram

    counts = op_histogram(models.if_model())
    assert counts["Mul"] == 1 and counts["Sub"] == 1 and counts["If"] == 1


def test_graph_sha256_ignores_weight_values_only():
    model = models.conv_bn_relu()
    base = graph_sha256(model)
    other = models.conv_bn_relu()
    weight = other.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight)
    weight.CopyFrom(onnx.numpy_helper.from_array(values + 1e-6, weight.name))
    other.producer_version = "another exporter"
    assert graph_sha256(other) == base
    other.graph.node[0].op_type = "ConvTranspose"
    assert graph_sha256(other) != base
    wider = models.conv_bn_relu()
    wider.graph.initializer[0].dims[0] += 1
    assert graph_sha256(wider) != base
