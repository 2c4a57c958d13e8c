"""The runner: manifest checks, input checks, CLI, and its one-way imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import runner
from runner import ArtifactError, InputMismatchError
from runner.manifest import read_manifest

from .conftest import PROJECT_ROOT, assert_one_line_error, run_cli


def test_run_and_benchmark(tiny_artifact):
    model = runner.load(tiny_artifact, num_threads=1)
    assert [s.name for s in model.input_info] == ["x"]
    assert model.input_info[0].shape == (1, 3, 16, 16)
    out = model.run({"x": np.ones((1, 3, 16, 16), np.float32)})
    assert out["y"].shape == (1, 4, 16, 16) and out["y"].dtype == np.float32
    stats = model.benchmark(runs=20, warmup=2)
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms
    assert stats.runs == 20


def test_input_mismatches_are_all_named(tiny_artifact):
    model = runner.load(tiny_artifact)
    with pytest.raises(InputMismatchError) as err:
        model.run({"x": np.ones((1, 3, 8, 8), np.float64), "extra": np.ones(1)})
    message = str(err.value)
    assert "[1, 3, 8, 8]" in message and "float64" in message and "extra" in message
    with pytest.raises(InputMismatchError, match="missing input 'x'"):
        model.run({})


def test_tampered_library_is_refused(artifact_copy):
    lib = artifact_copy / "model.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the manifest"):
        runner.load(artifact_copy)


def test_other_schema_is_refused(artifact_copy):
    path = artifact_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["schema_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="schema_version 99"):
        runner.load(artifact_copy)


def test_missing_folder_and_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        runner.load(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="not an artifact folder"):
        runner.load(tmp_path)


def test_manifest_contents(tiny_artifact):
    manifest = read_manifest(tiny_artifact)
    assert manifest["device"] == "cpu"
    assert manifest["target"]["kind"] == "llvm"
    assert manifest["library"]["arch"] == "x86_64"
    assert len(manifest["model"]["onnx_sha256"]) == 64
    assert manifest["versions"]["tvm"].startswith("0.27")
    assert manifest["verification"]["status"] == "passed"
    assert manifest["tuning"]["database_sha256"] == "untuned"
    assert manifest["pipeline"]["passes"][:3] == ["FoldConstantElementwise",
                                                  "ConvTransposeToDepthToSpace", "DecomposeOps"]
    assert "FuseTIR" in manifest["pipeline"]["passes"]


def test_runner_imports_only_tvm_runtime_and_numpy(tiny_artifact):
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        import runner
        model = runner.load({str(tiny_artifact)!r})
        model.run({{"x": np.zeros((1, 3, 16, 16), np.float32)}})
        import tvm.base
        print(json.dumps({{"modules": sorted(sys.modules),
                           "runtime_only": tvm.base._RUNTIME_ONLY,
                           "libs": sorted(tvm.base._LOADED_LIBS)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    roots = {name.split(".")[0] for name in info["modules"]}
    for forbidden in ("compile", "hydra", "omegaconf", "mlflow", "onnx", "onnxruntime", "torch"):
        assert forbidden not in roots, forbidden
    assert info["runtime_only"] is True
    assert "tvm_compiler" not in info["libs"]


def test_cli_runs_and_benchmarks(tiny_artifact, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((1, 3, 16, 16), np.float32))
    proc = run_cli("runner", str(tiny_artifact), "--input", f"x={x}", "--bench", "5",
                   "--save", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "output y: float32[1, 4, 16, 16]" in proc.stdout and "p50" in proc.stdout
    assert np.load(tmp_path / "out" / "y.npy").shape == (1, 4, 16, 16)


def test_cli_wrong_input_one_line(tiny_artifact, tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.ones((2, 3), np.int64))
    proc = run_cli("runner", str(tiny_artifact), "--input", f"x={x}")
    assert_one_line_error(proc, "input 'x' has shape [2, 3]", "dtype int64")


def test_cli_tampered_one_line(artifact_copy):
    with open(artifact_copy / "model.so", "ab") as handle:
        handle.write(b"\0")
    proc = run_cli("runner", str(artifact_copy))
    assert_one_line_error(proc, "does not match the manifest")


def test_thread_count_leaves_the_callers_cpus_alone(tiny_artifact):
    before = os.sched_getaffinity(0)
    runner.load(tiny_artifact, num_threads=1).run({"x": np.zeros((1, 3, 16, 16), np.float32)})
    assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_thread_count_can_grow_after_a_smaller_one(tiny_artifact):
    # TVM's pool keeps the worker count it started with: a benchmark that loaded 1 thread and
    # then 2 ran on one worker plus the pool's hand-off (2x slower), with the compiler loaded.
    code = textwrap.dedent(f"""
        import warnings
        import numpy as np
        import tvm, tvm.relax  # the compiler, as in the benchmark job
        import runner
        warnings.simplefilter("error")
        x = {{"x": np.zeros((1, 3, 16, 16), np.float32)}}
        for threads in (1, 2):
            runner.load({str(tiny_artifact)!r}, num_threads=threads).run(x)
            print(tvm.get_global_func("runtime.NumThreads")())
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "2"]
