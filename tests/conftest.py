"""Shared fixtures: tiny ONNX models, composed job configs, one tiny artifact for runner tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from compile.cli import CONF_DIR
from compile.config import PROJECT_ROOT, CompileJob, register_configs, to_job

from . import models

# The project's own cache: zoo downloads are shared between tests (and with make run).
CACHE_DIR = PROJECT_ROOT / ".cache"


def compose(*overrides: str, config: str = "compile", schema=CompileJob):
    """Compose a job config exactly as the command line does, and type it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config, overrides=list(overrides))
    return to_job(cfg, schema)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A folder with the tiny models as ONNX files."""
    folder = tmp_path_factory.mktemp("tiny")
    models.save(models.conv_bn_relu(), folder, "conv_bn_relu")
    models.save(models.inverted_residual(), folder, "inverted_residual")
    models.save(models.conv_transpose_head(), folder, "conv_transpose_head")
    models.save(models.matmul_gelu_layernorm(), folder, "matmul_gelu_layernorm")
    models.save(models.matmul_gelu_layernorm(batch="N"), folder, "dynamic_batch")
    models.save(models.if_model(), folder, "if_model")
    models.save(models.recurrent_model(), folder, "recurrent")
    return folder


@pytest.fixture
def job_for(tmp_path):
    """Compose a compile job for a tiny model file, writing into tmp_path, tracking off."""

    def make(path: Path, *overrides: str) -> CompileJob:
        return compose("model=file", f"model.path={path}", f"paths.artifacts_dir={tmp_path}/art",
                       f"paths.cache_dir={CACHE_DIR}", "tracking=off", "verify.bench_runs=3",
                       "verify.warmup=1", *overrides)

    return make


@pytest.fixture(scope="session")
def tiny_artifact(tiny_dir, tmp_path_factory) -> Path:
    """The conv_bn_relu model compiled for x86_64 once; tests copy it before changing it."""
    from compile.job import run_compile

    out = tmp_path_factory.mktemp("artifact")
    job = compose("model=file", f"model.path={tiny_dir / 'conv_bn_relu.onnx'}",
                  f"paths.artifacts_dir={out}", f"paths.cache_dir={CACHE_DIR}", "tracking=off",
                  "verify.bench_runs=0")
    return run_compile(job).artifact_dir


@pytest.fixture
def artifact_copy(tiny_artifact, tmp_path) -> Path:
    """A private copy of the tiny artifact."""
    dest = tmp_path / "artifact"
    shutil.copytree(tiny_artifact, dest)
    return dest


def run_cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m <args>`` from the project root; returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, no traceback, an ``error:`` line containing every needle."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[Path]:
    """Staging or backup folders a job may have left behind (there must be none)."""
    return [p for p in folder.rglob(".*") if ".stage-" in p.name or ".old-" in p.name]
