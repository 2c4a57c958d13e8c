"""Config composition for every model x target, and config errors."""

from __future__ import annotations

import pytest

from compile.cli import check_group_overrides, group_choices
from compile.config import ModelSource, TargetKind, TuningConfig
from compile.errors import ConfigError
from compile.targets import resolve_target, target_dict

from .conftest import compose

ZOO = ["mobilenet_v2", "ppocr_cls", "ppocr_det", "ppocr_rec"]
TARGETS = ["x86_64", "aarch64", "cuda_sm80", "cuda_sm90"]


def test_groups_offer_the_zoo_and_targets():
    assert set(ZOO) | {"file"} == set(group_choices("model"))
    assert set(TARGETS) == set(group_choices("target"))


@pytest.mark.parametrize("model", ZOO)
@pytest.mark.parametrize("target", TARGETS)
def test_every_model_and_target_composes(model, target):
    job = compose(f"model={model}", f"target={target}")
    assert job.model.name == model and job.target.name == target
    assert job.model.source in (ModelSource.wheel, ModelSource.torch_export)
    assert job.model.package and job.model.member_sha256 and job.model.input_shapes
    tvm_target = resolve_target(job.target)
    assert tvm_target.kind.name == job.target.kind.value
    if job.target.kind == TargetKind.cuda:
        assert tvm_target.attrs["arch"] == job.target.arch
        assert tvm_target.host is not None


def test_host_target_is_this_machine():
    from compile import _tvm

    spec = target_dict(compose("target=x86_64").target)
    assert spec["mcpu"] == str(_tvm.llvm_get_system_cpu())
    assert spec["num-cores"] >= 1


def test_user_file_needs_a_path():
    with pytest.raises(ConfigError, match="model.path"):
        compose("model=file")


def test_user_file_name_defaults_to_stem(tmp_path):
    job = compose("model=file", f"model.path={tmp_path}/my_net.onnx")
    assert job.model.name == "my_net"


@pytest.mark.parametrize("override, needle", [
    ("target.arch=volta", "sm_80"),
    ("target.mcpu=not-a-cpu", "mcpu"),
    ("model.atol=-1", "atol"),
    ("threads=0", "threads"),
    ("model.input_shapes={x:[1,0,4]}", "positive"),
    ("target.max_unroll_steps=-1", "max_unroll_steps"),
])
def test_bad_values_are_config_errors(override, needle):
    target = "target=cuda_sm80" if "arch" in override else "target=x86_64"
    with pytest.raises(Exception, match=needle) as err:
        job = compose(target, override)
        resolve_target(job.target)
    assert "ConfigError" in type(err.value).__name__ or "ToolchainError" in type(err.value).__name__


def test_tuning_trials_must_be_positive():
    with pytest.raises(ConfigError, match="tuning.trials"):
        TuningConfig(trials=0)


def test_unknown_group_names_listed():
    message = check_group_overrides(["model=resnet9000", "target=x86_64,riscv"])
    assert "unknown model 'resnet9000'" in message and "ppocr_det" in message
    assert "unknown target 'riscv'" in message and "aarch64" in message
    assert check_group_overrides(["model=ppocr_cls", "target=x86_64,aarch64"]) is None


def test_bench_rounds_must_be_positive():
    from compile.config import BenchConfig

    with pytest.raises(ConfigError, match="bench.rounds"):
        BenchConfig(rounds=0)
