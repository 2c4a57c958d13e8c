"""Build stage: apply schedules, ``tvm.compile`` and ``export_library`` (cross/CUDA aware)."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tvm

from . import _tvm, cuda
from .config import TargetConfig, TargetKind
from .errors import BuildError, ToolchainError
from .pipeline import post_tuning_passes
from .targets import build_target

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    """A built Relax VM executable.

    Attributes
    ----------
    executable : tvm.relax.Executable
    compile_s : float
        Wall time of scheduling and ``tvm.compile``, seconds.
    device_code : dict or None
        CUDA: ``{"format": ..., "arch": [...]}`` of the embedded device code.
    """

    executable: Any
    compile_s: float
    device_code: dict | None = None


def gpu_default_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Schedule every PrimFunc not yet scheduled with dlight's GPU rules.

    ``dlight.ApplyDefaultSchedule`` mutates its input in place (../shared/TVM_0_27.md), so it
    runs on a copy.
    """
    dl = _tvm.dlight
    copy = tvm.IRModule(dict(mod.functions.items()), attrs=mod.attrs)
    with target:
        return dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                       dl.gpu.GeneralReduction(), dl.gpu.Fallback())(copy)


def build(mod: tvm.IRModule, cfg: TargetConfig, target: tvm.target.Target,
          cache_dir: str | Path) -> BuildResult:
    """Compile a prepared (fused, optionally tuned) module for a target.

    Parameters
    ----------
    mod : tvm.IRModule
        Output of the preparation pipeline, with tuned schedules applied where available.
    cfg : TargetConfig
    target : tvm.target.Target
        ``compile.targets.resolve_target(cfg)``.
    cache_dir : str or Path
        The project's cache (CUDA builds keep a driver stub there, see ``compile.cuda``).

    Raises
    ------
    BuildError
        TVM fails to build, or a CUDA build holds no device code for its arch.
    """
    start = time.perf_counter()
    if cfg.kind != TargetKind.cuda:
        with target:
            mod = post_tuning_passes(cfg)(mod)
            executable = _compile(mod, target, cfg)
        return BuildResult(executable, time.perf_counter() - start)
    cuda.ensure_cuda_runtime(cache_dir)
    scheduled = gpu_default_schedule(mod, target)
    with cuda.nvcc_fatbin(str(cfg.arch)), target:
        executable = _compile(scheduled, target, cfg)
    device_code = cuda.check_device_code(executable.mod, str(cfg.arch))
    return BuildResult(executable, time.perf_counter() - start, device_code)


def _compile(mod: tvm.IRModule, target: tvm.target.Target, cfg: TargetConfig):
    try:
        return tvm.compile(mod, build_target(target))
    except Exception as err:  # TVMError and friends from C++
        raise BuildError(f"TVM failed to build for {cfg.name}: {_error_line(err)}") from None


def _error_line(err: Exception) -> str:
    """One line that names what TVM's build failed on.

    The last line of its message, without the trailing ``# Metadata omitted…`` note; for an
    operator that no pass lowered (VM codegen's "Offending call:"), its first line and the
    operator's name (e.g. an NHWC ``conv2d_transpose``, which TVM 0.27 does not legalize).
    """
    lines = [line for line in str(err).strip().splitlines()
             if line.strip() and not line.startswith("# Metadata omitted")]
    if not lines:
        return type(err).__name__
    op = re.search(r"Offending call:\s*R\.([\w.]+)\(", "\n".join(lines))
    if op:
        return f"{lines[0]} (operator: {op.group(1)})"
    return lines[-1]


#: The DWARF that LLVM emits for the kernels is ~11 % of an int8 MobileNetV2 library; symbols
#: stay (the runtime finds kernels through the dynamic symbol table, profilers by name).
LINK_OPTIONS = ["-Wl,--strip-debug"]


def export(executable: Any, path: Path, cfg: TargetConfig) -> None:
    """Export the executable as one shared object (weights embedded, no debug sections).

    Parameters
    ----------
    executable : tvm.relax.Executable
    path : Path
        The ``model.so`` to write (in a staging folder).
    cfg : TargetConfig
        Its ``cross_compiler`` links the library for another architecture.

    Raises
    ------
    ToolchainError
        The compiler or linker failed (its last error line is quoted).
    """
    fcompile = _tvm.cc.cross_compiler(cfg.cross_compiler) if cfg.cross_compiler else None
    try:
        if fcompile is None:
            executable.export_library(str(path), options=LINK_OPTIONS)
        else:
            executable.export_library(str(path), fcompile=fcompile, options=LINK_OPTIONS)
    except Exception as err:
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        raise ToolchainError(f"linking {path.name} for {cfg.name} failed: "
                             f"{lines[-1] if lines else type(err).__name__}") from None


#: x86 instructions that show integer dot products (vpdpbusd: AVX-512/AVX VNNI; vpmaddubsw +
#: vpmaddwd: AVX2/AVX-512BW u8 x s8 and i16 x i16 multiply-adds) and float FMAs, for reports.
X86_MNEMONICS = ("vpdpbusd", "vpdpwssd", "vpmaddubsw", "vpmaddwd", "vfmadd231ps", "vfmadd213ps")


def instruction_counts(library: Path, mnemonics: tuple[str, ...] = X86_MNEMONICS) -> dict[str, int]:
    """Count instructions in a shared object's disassembly (binutils ``objdump -d``).

    Returns
    -------
    dict of str to int
        Mnemonic -> occurrences; empty when objdump is not installed.
    """
    import shutil
    import subprocess

    if shutil.which("objdump") is None:
        return {}
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                             capture_output=True, text=True, check=False).stdout
    counts = dict.fromkeys(mnemonics, 0)
    for line in listing.splitlines():
        parts = line.split("\t")
        if len(parts) >= 2:
            word = parts[1].split(" ", 1)[0].strip()
            if word in counts:
                counts[word] += 1
    return counts
