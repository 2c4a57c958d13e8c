"""The compile job end to end: CLI, MLflow run, failures that leave nothing behind."""

from __future__ import annotations

import json
import re

import pytest

from compile.errors import ToolchainError, VerificationError
from compile.job import run_compile
from compile.tracking import tracked_run

from .conftest import assert_one_line_error, compose, leftovers, run_cli


def test_cli_compiles_a_user_file(tiny_dir, tmp_path):
    proc = run_cli("compile", "model=file", f"model.path={tiny_dir / 'conv_bn_relu.onnx'}",
                   f"paths.artifacts_dir={tmp_path}", "tracking=off", "verify.bench_runs=3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needle in ("kernels", "verify     passed", "latency", "artifact"):
        assert needle in proc.stdout, proc.stdout
    manifest = json.loads((tmp_path / "conv_bn_relu" / "x86_64" / "manifest.json").read_text())
    assert manifest["verification"]["status"] == "passed"


def test_cli_unknown_model_and_target(tmp_path):
    proc = run_cli("compile", "model=resnet9000", "target=riscv")
    line = assert_one_line_error(proc, "unknown model 'resnet9000'", "unknown target 'riscv'")
    assert "ppocr_det" in line and "aarch64" in line


def test_cli_corrupt_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    proc = run_cli("compile", "model=file", f"model.path={bad}",
                   f"paths.artifacts_dir={tmp_path / 'art'}", "tracking=off")
    assert_one_line_error(proc, "bad.onnx")
    assert not (tmp_path / "art").exists() or not any((tmp_path / "art").rglob("*.so"))


def test_cli_unsupported_ops_listed(tiny_dir, tmp_path):
    proc = run_cli("compile", "model=file", f"model.path={tiny_dir / 'recurrent.onnx'}",
                   f"paths.artifacts_dir={tmp_path}", "tracking=off")
    assert_one_line_error(proc, "GRU x1 (1 in subgraphs)", "LSTM x1")


def test_cli_missing_cross_compiler(tiny_dir, tmp_path):
    proc = run_cli("compile", "model=file", f"model.path={tiny_dir / 'conv_bn_relu.onnx'}",
                   "target=aarch64", "target.cross_compiler=no-such-aarch64-gcc",
                   f"paths.artifacts_dir={tmp_path}", "tracking=off")
    assert_one_line_error(proc, "no-such-aarch64-gcc", "apt-get install gcc-aarch64-linux-gnu")
    assert not any(tmp_path.rglob("*.so"))


def test_missing_cross_compiler_fails_before_work(tiny_dir, job_for):
    job = job_for(tiny_dir / "conv_bn_relu.onnx", "target=aarch64",
                  "target.cross_compiler=no-such-aarch64-gcc")
    with pytest.raises(ToolchainError, match="no-such-aarch64-gcc"):
        run_compile(job)


def test_failed_verification_keeps_previous_artifact(tiny_dir, job_for, tmp_path):
    path = tiny_dir / "matmul_gelu_layernorm.onnx"
    good = run_compile(job_for(path))
    before = (good.artifact_dir / "manifest.json").read_text()
    # Zero tolerance: float32 noise between TVM's and ONNX Runtime's kernels fails it.
    with pytest.raises(VerificationError, match=r"max abs error [0-9.e-]+ .*atol=0.0 rtol=0.0"):
        run_compile(job_for(path, "model.atol=0", "model.rtol=0"))
    assert (good.artifact_dir / "manifest.json").read_text() == before
    assert leftovers(tmp_path) == []


def test_mlflow_run_records_the_job(tiny_dir, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_cli("compile", "model=file", f"model.path={tiny_dir / 'conv_bn_relu.onnx'}",
                   f"paths.artifacts_dir={tmp_path}/art", f"tracking.uri={uri}",
                   "verify.bench_runs=5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = re.search(r"mlflow +run ([0-9a-f]{32})", proc.stdout).group(1)
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.run_name == "compile/conv_bn_relu/x86_64"
    assert run.info.status == "FINISHED"
    for key in ("import_s", "compile_s", "kernels_before_fusion", "kernels_after_fusion",
                "max_abs_err", "latency_ms_p50", "ort_latency_ms_p50"):
        assert key in run.data.metrics, key
    assert run.data.tags["target"] == "x86_64" and run.data.tags["tvm_version"].startswith("0.27")
    assert run.data.tags["git_commit"] and run.data.tags["host_cpu"]
    assert run.data.params["target.name"] == "x86_64"
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"manifest.json", "onnx_ops.json", "config.yaml"} <= names
    assert (tmp_path / "mlartifacts").is_dir()


def test_failed_job_marks_run_failed(tiny_dir, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    job = compose("model=file", f"model.path={tiny_dir / 'matmul_gelu_layernorm.onnx'}",
                  f"paths.artifacts_dir={tmp_path}/art", f"tracking.uri={uri}",
                  "model.atol=0", "model.rtol=0", "verify.bench_runs=0")
    with pytest.raises(VerificationError):
        with tracked_run(job.tracking, "compile/failing/x86_64") as tracker:
            run_compile(job, tracker)
    run = mlflow.MlflowClient(uri).get_run(tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["verification"] == "failed" and run.data.metrics["max_abs_err"] > 0


def test_cli_bad_override_is_a_config_error():
    proc = run_cli("compile", "model=ppocr_cls", "model.no_such_key=1", "tracking=off")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no_such_key" in proc.stderr


def test_rebuilding_float32_keeps_its_quantized_variants(tmp_path):
    # artifacts/<model>/<target>/int8 lives inside the float32 artifact's folder: replacing the
    # float32 artifact once deleted the int8 one (found when compile.bench rebuilt both).
    from compile.artifact import StagedArtifact

    final = tmp_path / "mobilenet_v2" / "x86_64"
    for content in (b"old", b"new"):
        with StagedArtifact(final) as stage:
            stage.library.write_bytes(content)
            stage.commit()
        if content == b"old":
            (final / "int8").mkdir()
            (final / "int8" / "model.so").write_bytes(b"int8")
    assert (final / "model.so").read_bytes() == b"new"
    assert (final / "int8" / "model.so").read_bytes() == b"int8"
    assert sorted(p.name for p in final.parent.iterdir()) == ["x86_64"]
