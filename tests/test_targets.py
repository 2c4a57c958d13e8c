"""Cross and GPU targets: artifacts built here (no device needed) and checked for their arch."""

from __future__ import annotations

import shutil

import pytest

from compile.job import run_compile
from runner import ArtifactError
from runner.manifest import elf_machine, read_manifest

needs_cross_gcc = pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None,
                                     reason="gcc-aarch64-linux-gnu not installed "
                                            "(make test installs it as root)")
needs_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")


@needs_cross_gcc
def test_aarch64_artifact_is_an_aarch64_shared_object(tiny_dir, job_for):
    result = run_compile(job_for(tiny_dir / "conv_bn_relu.onnx", "target=aarch64"))
    library = result.artifact_dir / "model.so"
    assert elf_machine(library) == "aarch64"
    manifest = read_manifest(result.artifact_dir)
    assert manifest["library"]["arch"] == "aarch64"
    assert manifest["target"]["mtriple"] == "aarch64-linux-gnu"
    assert manifest["verification"]["status"] == "skipped"
    import runner

    with pytest.raises(ArtifactError, match="built for aarch64"):
        runner.load(result.artifact_dir)


@needs_nvcc
@pytest.mark.parametrize("target, arch", [("cuda_sm80", "sm_80"), ("cuda_sm90", "sm_90")])
def test_cuda_artifact_holds_device_code_for_its_arch(tiny_dir, job_for, target, arch):
    from compile import cuda

    result = run_compile(job_for(tiny_dir / "matmul_gelu_layernorm.onnx", f"target={target}"))
    manifest = read_manifest(result.artifact_dir)
    assert manifest["device"] == "cuda"
    code = manifest["library"]["device_code"]
    assert code["format"] == "fatbin" and arch in code["sass"]
    assert code["ptx"] == [arch.replace("sm_", "compute_")]
    # The exported file itself holds the fatbin, not CUDA source to compile at load time.
    import tvm

    cuda.ensure_cuda_runtime(job_for(tiny_dir / "x.onnx").paths.cache_dir)
    loaded = cuda.device_code(tvm.runtime.load_module(str(result.artifact_dir / "model.so")))
    assert [m["format"] for m in loaded] == ["fatbin"] and arch in loaded[0]["sass"]


@needs_nvcc
def test_cuda_build_without_gpu_schedules_is_refused():
    import numpy as np
    import tvm
    from tvm import relax

    from compile import cuda
    from compile.errors import BuildError

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(bb.emit(relax.op.add(x, relax.const(np.ones((4, 8), "float32")))))
        bb.emit_func_output(out)
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    with target:
        mod = relax.get_pipeline("zero")(bb.get())
    # The CPU build pipeline on a CUDA target: TVM builds it and no kernel is on the GPU.
    executable = tvm.compile(mod, target, relax_pipeline=relax.get_pipeline("default_build"))
    with pytest.raises(BuildError, match="no CUDA device module"):
        cuda.check_device_code(executable.mod, "sm_80")


@pytest.mark.gpu
def test_cuda_artifact_runs_on_gpu(tiny_dir, job_for):
    import tvm

    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU on this machine")
    result = run_compile(job_for(tiny_dir / "conv_bn_relu.onnx", "target=cuda_sm80"))
    assert result.verification["status"] == "passed"


@needs_cross_gcc
@needs_nvcc
def test_multirun_builds_one_model_for_three_targets(tiny_dir, tmp_path):
    from .conftest import run_cli

    proc = run_cli("compile", "-m", "model=file", f"model.path={tiny_dir / 'conv_bn_relu.onnx'}",
                   "target=x86_64,aarch64,cuda_sm80", f"paths.artifacts_dir={tmp_path}",
                   "tracking=off", "verify.bench_runs=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    archs = {t: read_manifest(tmp_path / "conv_bn_relu" / t)["library"]["arch"]
             for t in ("x86_64", "aarch64", "cuda_sm80")}
    assert archs == {"x86_64": "x86_64", "aarch64": "aarch64", "cuda_sm80": "x86_64"}
    assert read_manifest(tmp_path / "conv_bn_relu" / "cuda_sm80")["device"] == "cuda"


@needs_nvcc
def test_device_code_is_compiled_without_fast_math():
    # TVM 0.27 passes --use_fast_math to nvcc: powf becomes exp2(y * log2(x)), NaN for negative
    # bases (PP-OCRv4 rec's LayerNorm variance pow(x - mean, 2) gave NaN on an H100).
    import tvm

    from compile import _tvm, cuda

    source = ('extern "C" __global__ void k(float* y, const float* x) '
              '{ y[threadIdx.x] = powf(x[threadIdx.x], 2.0f); }')
    with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
        ours = bytes(cuda.compile_device_code(source, "ptx", "sm_90")).decode()
        default = bytes(_tvm.nvcc.compile_cuda(source, "ptx", arch="sm_90",
                                               compiler="nvcc")).decode()
    fast = ("lg2.approx.ftz.f32", "ex2.approx.ftz.f32", "add.ftz.f32")
    assert all(op in default for op in fast)  # TVM's default: the fast-math powf
    assert not any(op in ours for op in fast)
    assert "ret;" in ours


@needs_nvcc
def test_runner_loads_tvm_cuda_runtime_or_says_what_is_missing(tiny_dir, job_for):
    # The runner imports TVM's runtime alone, which registers no CUDA device API: it loads
    # libtvm_runtime_cuda itself. Without an NVIDIA driver that fails with one clear line.
    import ctypes.util
    import subprocess
    import sys

    result = run_compile(job_for(tiny_dir / "conv_bn_relu.onnx", "target=cuda_sm90"))
    run = subprocess.run([sys.executable, "-m", "runner", str(result.artifact_dir)],
                         capture_output=True, text=True, timeout=120)
    if ctypes.util.find_library("cuda") is None:
        assert run.returncode == 2, run.stderr
        assert "Traceback" not in run.stderr
        assert "built for CUDA and TVM's CUDA runtime did not load (libcuda.so.1" in run.stderr
        assert "libcudart.so.13" in run.stderr
    elif run.returncode == 0:  # a GPU machine
        assert "latency" in run.stdout or "output" in run.stdout
    else:
        assert "built for CUDA" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("mcpu", ["znver3", "znver5"])
def test_code_for_amd_cpus_has_no_instructions_of_their_unused_features(tiny_dir, job_for, mcpu):
    """host_runs ignores SSE4A and VP2INTERSECT (compile.targets.UNUSED_FEATURES): kernels
    compiled here for a CPU that has them contain none of their instructions, so the committed
    Zen databases' code runs on CPUs without them (Intel)."""
    from compile.build import instruction_counts

    unused = ("extrq", "insertq", "movntss", "movntsd", "vp2intersectd", "vp2intersectq")
    for model in ("inverted_residual", "matmul_gelu_layernorm"):
        result = run_compile(job_for(tiny_dir / f"{model}.onnx", f"target.mcpu={mcpu}",
                                     "verify.enabled=false"))
        counts = instruction_counts(result.artifact_dir / "model.so", unused + ("ret",))
        if not counts:
            pytest.skip("objdump not installed")
        assert counts.pop("ret") > 0  # the disassembly was read
        assert counts == dict.fromkeys(unused, 0)


def test_code_built_here_for_an_amd_cpu_leaves_out_the_features_this_cpu_lacks(tmp_path):
    """LLVM lowers byte shuffles to SSE4A's insertq for znver3: a packed 3x3 uint8 convolution
    built for it had 11 and died of SIGILL on an Intel Xeon. The build turns such features off
    (compile.targets.build_target) where this CPU lacks them."""
    import numpy as np
    import tvm
    from tvm import relax

    from compile.build import instruction_counts
    from compile.targets import build_target, host_isa_features

    from .test_pass_int8_nhwc import _nhwc_conv, _pack
    from .test_pass_pointwise_int8 import ZEN4

    target = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    if "sse4a" in host_isa_features():  # an AMD CPU: nothing to leave out
        assert "mattr" not in dict(build_target(target).export())
        return
    assert list(dict(build_target(target).export())["mattr"]) == ["-sse4a"]
    weights = np.random.default_rng(9).integers(-128, 128, (24, 3, 3, 96)).astype(np.int8)
    mod, _ = _pack(_nhwc_conv("uint8", weights, (40, 40), (1, 1), (1, 1, 1, 1)), ZEN4)
    counts = {}
    for name, built_for in (("as_named", target), ("runnable", build_target(target))):
        with built_for:
            lowered = relax.get_pipeline("zero")(mod)
        tvm.compile(lowered, built_for).export_library(str(tmp_path / f"{name}.so"))
        counts[name] = instruction_counts(tmp_path / f"{name}.so", ("insertq", "extrq", "ret"))
    if not counts["runnable"]:
        pytest.skip("objdump not installed")
    assert counts["as_named"]["insertq"] > 0  # LLVM does emit SSE4A for znver3
    assert counts["runnable"]["insertq"] == counts["runnable"]["extrq"] == 0
    assert counts["runnable"]["ret"] > 0


def test_builds_divide_by_a_reused_divisor_with_its_reciprocal():
    """Every requantization divides by its output scale; compile.targets.build_target lets LLVM
    compute 1 / s once per scale and multiply (arcp), and leaves non-llvm targets alone."""
    import re

    import numpy as np
    import tvm
    from tvm.script import tirx as T

    from compile.targets import build_target

    @T.prim_func(s_tir=True)
    def requantize(a: T.Buffer((64, 256), "float32"), s: T.Buffer((64,), "float32"),
                   b: T.Buffer((64, 256), "float32")):
        for i, j in T.grid(64, 256):
            with T.sblock("b"):
                vi, vj = T.axis.remap("SS", [i, j])
                b[vi, vj] = a[vi, vj] / s[vi]

    plain = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4"})
    divides = {}
    for name, target in (("plain", plain), ("built", build_target(plain))):
        lib = tvm.compile(tvm.IRModule({"main": requantize}), target=target)
        divides[name] = len(re.findall(r"\bv?divps\b", lib.mod.inspect_source("asm")))
        rng = np.random.default_rng(0)
        a, s = rng.standard_normal((64, 256)).astype("float32"), rng.uniform(1e-3, 1, 64)
        out = tvm.runtime.tensor(np.zeros((64, 256), "float32"))
        lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(s.astype("float32")), out)
        np.testing.assert_allclose(out.numpy(), a / s[:, None].astype("float32"), rtol=2e-7)
    assert divides["plain"] > 0 and divides["built"] == 0
    gpu = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    assert build_target(gpu).same_as(gpu)


def test_intel_avx512_cpus_get_512_bit_vectors_unless_the_user_says_otherwise(tiny_dir, job_for):
    """LLVM prefers 256-bit vectors on Intel CPUs with AVX-512 (compile.targets.NO_PREFER_256):
    the project turns that off, so kernels use zmm registers; target.mattr can turn it back on."""
    import subprocess

    from compile.targets import target_dict

    base = job_for(tiny_dir / "matmul_gelu_layernorm.onnx", "target.mcpu=icelake-server",
                   "verify.enabled=false")
    assert target_dict(base.target)["mattr"] == ["-prefer-256-bit"]
    for mcpu in ("znver5", "haswell"):  # AMD's Zen 5 and a CPU without AVX-512: nothing added
        assert "mattr" not in target_dict(job_for(tiny_dir / "x.onnx",
                                                  f"target.mcpu={mcpu}").target)
    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    registers = {}
    for label, extra in (("default", []), ("user", ["target.mattr=[+prefer-256-bit]"])):
        job = job_for(tiny_dir / "matmul_gelu_layernorm.onnx", "target.mcpu=icelake-server",
                      "verify.enabled=false", *extra)
        result = run_compile(job)
        assert read_manifest(result.artifact_dir)["target"]["mattr"] == (
            ["-prefer-256-bit"] if label == "default" else ["+prefer-256-bit"])
        asm = subprocess.run(["objdump", "-d", str(result.artifact_dir / "model.so")],
                             capture_output=True, text=True, check=True).stdout
        registers[label] = (asm.count("%zmm"), asm.count("%ymm"))
    assert registers["default"][0] > 10 * registers["default"][1]  # 512-bit code
    assert registers["user"][0] == 0 and registers["user"][1] > 0  # 256-bit code, as asked
