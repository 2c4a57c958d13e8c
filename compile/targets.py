"""Targets: a TargetConfig resolved into a TVM ``Target`` for this build, and toolchain checks."""

from __future__ import annotations

import functools
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runner.model import host_arch

from . import _tvm, fast_math
from .config import TargetConfig, TargetKind, host_threads
from .errors import ToolchainError

#: The CUDA toolkit's compiler; Debian/NVIDIA package that provides it.
NVCC = "nvcc"
NVCC_PACKAGE = "nvidia-cuda-toolkit (Debian) or NVIDIA's cuda-nvcc"


def host_cpu() -> str:
    """Return LLVM's name for this machine's CPU (e.g. ``znver3``)."""
    return str(_tvm.llvm_get_system_cpu())


#: LLVM feature names of instruction sets its code generator may use in kernels (the others in
#: ``llvm_get_cpu_features`` are tuning hints such as ``slow-3ops-lea``, not instructions).
ISA_FEATURE_PREFIXES = ("avx", "sse", "ssse", "fma", "f16c", "bmi", "amx", "popcnt", "lzcnt",
                        "movbe", "adx", "cmov", "vaes", "vpclmulqdq", "gfni", "sha", "aes",
                        "pclmul", "cx16", "xop", "tbm", "crc32", "mmx", "x87")


@functools.cache
def llvm_cpu_features(mcpu: str, mtriple: str = "") -> frozenset[str]:
    """Every feature LLVM enables for a CPU name: instruction sets and tuning hints."""
    spec = {"kind": "llvm", "mcpu": mcpu, **({"mtriple": mtriple} if mtriple else {})}
    return frozenset(str(f) for f in _tvm.llvm_get_cpu_features(_tvm.Target(spec)))


def isa_features(mcpu: str) -> set[str]:
    """Instruction-set features LLVM enables for an x86 CPU name (:data:`ISA_FEATURE_PREFIXES`)."""
    return {f for f in llvm_cpu_features(mcpu) if f.startswith(ISA_FEATURE_PREFIXES)}


#: /proc/cpuinfo flags whose LLVM feature name is not the flag without underscores.
CPUINFO_FLAGS = {"sse4_1": "sse4.1", "sse4_2": "sse4.2", "pclmulqdq": "pclmul", "abm": "lzcnt",
                 "amx_int8": "amx-int8", "amx_bf16": "amx-bf16", "amx_tile": "amx-tile",
                 "amx_fp16": "amx-fp16", "avx_vnni": "avxvnni"}

#: Features of AMD CPUs that schedules do not depend on: AMD's SSE4A (``extrq``, ``insertq``,
#: ``movntss``/``movntsd``) and ``vp2intersect``. :func:`host_runs` does not require them, and
#: code built to run here for a CPU that has them is built with them turned off
#: (:func:`host_compat_mattr`): LLVM lowers some byte shuffles to ``insertq`` (11 in a packed
#: 3×3 uint8 convolution built for ``znver3``, which then died of SIGILL on an Intel Xeon,
#: 2026-11-23), so they cannot be assumed absent.
UNUSED_FEATURES = frozenset({"sse4a", "avx512vp2intersect"})


@functools.cache
def host_isa_features() -> frozenset[str]:
    """Return this CPU's instruction-set features: LLVM's for :func:`host_cpu` and /proc/cpuinfo's.

    LLVM names the CPU by its model (a Sapphire Rapids Xeon under a hypervisor reads as
    ``rocketlake``, which lacks its ``avxvnni`` and ``avx512bf16``); the kernel's flags
    (``avx512_vnni`` -> ``avx512vnni``, :data:`CPUINFO_FLAGS`) add what the CPU reports having.
    Read once per process (:func:`host_runs` asks for every database folder it weighs).
    """
    features = isa_features(host_cpu())
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        line = next((line for line in cpuinfo.read_text().splitlines()
                     if line.startswith("flags")), "")
        for flag in line.partition(":")[2].split():
            name = CPUINFO_FLAGS.get(flag, flag.replace("_", ""))
            if name.startswith(ISA_FEATURE_PREFIXES):
                features.add(name)
    return frozenset(features)


def host_runs(mcpu: str) -> bool:
    """Whether code LLVM generates for ``mcpu`` runs on this machine's CPU.

    True when every instruction-set feature of ``mcpu`` that kernels can contain (not
    :data:`UNUSED_FEATURES`) is one of this CPU's (:func:`isa_features`,
    :func:`host_isa_features`), e.g. ``znver3`` code on a ``znver5`` or on an Intel Xeon with
    AVX-512; False for unknown CPUs.
    """
    if not _tvm.llvm_is_valid_cpu(mcpu, ""):
        return False
    return isa_features(mcpu) - UNUSED_FEATURES <= host_isa_features()


def host_compat_mattr(mcpu: str | None, mtriple: str | None = None) -> list[str]:
    """``mattr`` entries that make code for ``mcpu`` run on this CPU (``-sse4a`` on Intel).

    The :data:`UNUSED_FEATURES` of ``mcpu`` that this CPU lacks, turned off; nothing for cross
    targets (``mtriple``), unknown CPUs, or where this CPU has them all.
    """
    if not mcpu or mtriple or not _tvm.llvm_is_valid_cpu(mcpu, ""):
        return []
    return [f"-{f}" for f in sorted(UNUSED_FEATURES & isa_features(mcpu) - host_isa_features())]


#: LLVM's ``arcp`` fast-math flag ("allow reciprocal"), set on every llvm build: a float
#: ``x / y`` may become ``x * (1 / y)``, with ``1 / y`` computed once where ``y`` is reused. Each
#: requantization divides by its output scale (``QuantizeLinear``'s ``x / s``), per channel in
#: NNCF's models: in mobilenet_v2's 16-bit model a 1x1 convolution's inner loop had one 16-lane
#: ``vdivps`` per 12 ``vpdpwssd``, and ``model.so`` had 466 of them, 119 with the flag. The
#: result may differ from the exact quotient by one unit in the last place, so a rounded
#: quantized value can be one step off ONNX Runtime's where the quotient lies that close to a
#: half. Measured (Intel Xeon Sapphire Rapids, 2 threads, runner, one process, interleaved, 6 x 100
#: runs, 2026-11-24; the same 40 tuned schedules): p50 2.66 -> 2.49 ms, 2.86 -> 2.67 ms and
#: 2.76 -> 2.70 ms in three runs; max abs error against ONNX Runtime 0.0070 -> 0.0084, top-1
#: drop unchanged (2.00 %).
FAST_MATH = {"fast-math-arcp": True}


def build_target(target: _tvm.Target) -> _tvm.Target:
    """The target the compile job builds with, and the tuning job times candidates with.

    llvm targets get :data:`FAST_MATH` and, for this machine (no ``mtriple``) with another
    CPU's ``mcpu`` (a database's, see ``compile.prepare.adopt_database_cpu``), the features
    this CPU lacks turned off (:func:`host_compat_mattr`), so that the code runs here, and
    float32 ``exp`` is lowered to vectorizable arithmetic in this process
    (:func:`compile.fast_math.register`). None of these changes a schedule, so a tuning database
    applies unchanged. Other targets are returned as they are.
    """
    if target.kind.name != "llvm":
        return target
    fast_math.register()
    spec = dict(target.export())
    extra = host_compat_mattr(spec.get("mcpu"), spec.get("mtriple"))
    if extra:
        spec["mattr"] = [*spec.get("mattr", []), *extra]
    return _tvm.Target({**spec, **FAST_MATH})


#: LLVM's tuning for Intel CPUs with AVX-512 (``skylake-avx512`` to ``sapphirerapids``, and
#: ``rocketlake``, the name of a Sapphire Rapids Xeon under a hypervisor) prefers 256-bit vectors
#: (AVX-512 lowered the clock of Skylake servers) and splits the 512-bit vector operations of
#: TVM's kernels, scheduled for AVX-512's 16 float lanes, into pairs of 256-bit ones. Off for
#: those CPUs: mobilenet_v2's 8-bit model with the Zen 5 schedules, built for ``rocketlake`` on
#: the Xeon, ran at p50 2.88 ms with the preference and 2.52 ms without (2 threads, one process,
#: interleaved; 7483 -> 2342 instructions on ymm registers in ``model.so``; 2026-11-23).
NO_PREFER_256 = "-prefer-256-bit"


def derived_mattr(mcpu: str | None, mtriple: str | None = None) -> list[str]:
    """Features the project adds to an x86 CPU's target (``mattr`` entries).

    :data:`NO_PREFER_256` where LLVM prefers 256-bit vectors on a CPU with AVX-512; nothing for
    other CPUs, unknown ones and other architectures.
    """
    if not mcpu or (mtriple and not mtriple.startswith("x86_64")) \
            or not _tvm.llvm_is_valid_cpu(mcpu, mtriple or ""):
        return []
    features = llvm_cpu_features(mcpu, mtriple or "")
    return [NO_PREFER_256] if {"avx512f", "prefer-256-bit"} <= features else []


def same_target_but_cpu(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two llvm target dicts differ only in ``mcpu`` (and the features it derives)."""
    def rest(spec: dict[str, Any]) -> dict[str, Any]:
        derived = derived_mattr(spec.get("mcpu"), spec.get("mtriple"))
        mattr = [m for m in spec.get("mattr", []) if m not in derived]
        return {k: v for k, v in {**spec, "mattr": mattr}.items() if k != "mcpu" and v != []}

    return a.get("mcpu") != b.get("mcpu") and rest(a) == rest(b)


def target_dict(cfg: TargetConfig) -> dict[str, Any]:
    """Return the TVM target dict of a target config, with ``host`` values resolved.

    ``mcpu: host`` becomes this machine's CPU as LLVM names it, ``num_cores: null`` its number
    of usable cores (llvm targets without ``mtriple`` are this machine). x86 CPUs with AVX-512
    that LLVM tunes for 256-bit vectors get ``-prefer-256-bit`` (:data:`NO_PREFER_256`) unless
    ``target.mattr`` names that feature.
    """
    if cfg.kind == TargetKind.cuda:
        spec: dict[str, Any] = {"kind": "cuda", "arch": cfg.arch}
        if cfg.max_threads_per_block:
            spec["max_threads_per_block"] = cfg.max_threads_per_block
        if cfg.max_shared_memory_per_block:
            spec["max_shared_memory_per_block"] = cfg.max_shared_memory_per_block
        return spec
    spec = {"kind": "llvm"}
    if cfg.mtriple:
        spec["mtriple"] = cfg.mtriple
    if cfg.mcpu:
        spec["mcpu"] = host_cpu() if cfg.mcpu == "host" else cfg.mcpu
    mattr = list(cfg.mattr)
    if not any(m.lstrip("+-") == NO_PREFER_256[1:] for m in mattr):  # the user's choice wins
        mattr += derived_mattr(spec.get("mcpu"), cfg.mtriple)
    if mattr:
        spec["mattr"] = mattr
    spec["num-cores"] = cfg.num_cores if cfg.num_cores is not None else host_threads()
    return spec


def resolve_target(cfg: TargetConfig) -> _tvm.Target:
    """Return the TVM target for a config (CUDA targets get a generic llvm host).

    Raises
    ------
    ToolchainError
        If LLVM does not know the mcpu, or TVM rejects the target dict.
    """
    spec = target_dict(cfg)
    if "mcpu" in spec and not _tvm.llvm_is_valid_cpu(spec["mcpu"], spec.get("mtriple", "")):
        # LLVM would only log this and build for a generic CPU.
        raise ToolchainError(f"target {cfg.name}: LLVM does not know mcpu={spec['mcpu']!r} "
                             f"for {spec.get('mtriple', 'this machine')}; fix target.mcpu")
    try:
        if cfg.kind == TargetKind.cuda:
            return _tvm.Target(spec, host={"kind": "llvm"})
        return _tvm.Target(spec)
    except Exception as err:  # TVM raises ValueError/TVMError for bad target dicts
        raise ToolchainError(f"TVM rejects target {cfg.name} {spec}: "
                             f"{str(err).strip().splitlines()[0]}") from None


def exported_target(target: _tvm.Target) -> dict[str, Any]:
    """Return a target as JSON data (TVM's ``Target.export()``, tuples as lists)."""

    def plain(value):
        if isinstance(value, (str, int, float, bool)) or value is None:
            return value
        if hasattr(value, "items"):  # dict, tvm_ffi Map
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Iterable):  # tuple, tvm_ffi Array
            return [plain(v) for v in value]
        return str(value)

    return plain(dict(target.export()))


def library_arch(cfg: TargetConfig) -> str:
    """Return the CPU architecture the exported library runs on (``x86_64``, ``aarch64``)."""
    if cfg.kind == TargetKind.llvm and cfg.mtriple:
        return cfg.mtriple.split("-")[0]
    return host_arch()


def host_runnable(cfg: TargetConfig) -> bool:
    """Return whether an artifact for this target can run on this machine."""
    if library_arch(cfg) != host_arch():
        return False
    if cfg.kind == TargetKind.cuda:
        import tvm

        return bool(tvm.cuda(0).exist)
    return True


def check_toolchain(cfg: TargetConfig) -> None:
    """Fail early, before any work, when a compiler the target needs is missing.

    Raises
    ------
    ToolchainError
        Naming the missing program and the package that provides it.
    """
    if cfg.cross_compiler and shutil.which(cfg.cross_compiler) is None:
        package = cfg.cross_compiler_package or "your distribution's cross toolchain"
        raise ToolchainError(f"target {cfg.name} needs the cross compiler {cfg.cross_compiler}, "
                             f"not found on PATH; install it with: apt-get install {package}")
    if cfg.kind == TargetKind.cuda and shutil.which(NVCC) is None:
        raise ToolchainError(f"target {cfg.name} needs nvcc (CUDA toolkit) on PATH to compile "
                             f"device code; install {NVCC_PACKAGE}")
