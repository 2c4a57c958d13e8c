"""CUDA device code: compiled to a fatbin by nvcc at build time, and checked in the result.

TVM 0.27 compiles CUDA kernels through the ``tvm_callback_cuda_compile`` global function only
when its CUDA runtime (``libtvm_runtime_cuda``) is loaded, and that needs the driver library
``libcuda.so.1``. On a build machine without an NVIDIA driver TVM silently falls back to
embedding CUDA *source*, left to compile at load time on the deployment machine. To always ship
device code, :func:`ensure_cuda_runtime` loads the driver library, or, without a driver, a stub
that only exports the driver symbols TVM's CUDA runtime links against (no call succeeds; it
exists so the library loads). Build-time code generation never calls the driver.

Device code is compiled without nvcc's ``--use_fast_math``, which TVM 0.27 passes by default: it
makes ``powf`` ``__powf`` (``exp2(y * log2(x))``), NaN for every negative base, and PP-OCRv4 rec's
LayerNorm variance ``pow(x - mean, 2)`` gave NaN for every output on an H100 (2026-11-23).
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import _tvm
from .errors import BuildError, ToolchainError

log = logging.getLogger(__name__)

#: Driver symbols libtvm_runtime_cuda.so (TVM 0.27) resolves at load time; each returns
#: CUDA_ERROR_NO_DEVICE (100).
_STUB_SOURCE = r"""
#define STUB(name) int name() { return 100; }
STUB(cuDeviceGetName) STUB(cuFuncSetAttribute) STUB(cuLaunchKernelEx)
STUB(cuModuleGetFunction) STUB(cuModuleLoadData) STUB(cuModuleUnload)
STUB(cuTensorMapEncodeTiled)
int cuGetErrorName(int e, const char** s) { *s = "CUDA_ERROR_NO_DEVICE"; return 0; }
int cuGetErrorString(int e, const char** s) { *s = "no NVIDIA driver (build-time stub)"; return 0; }
"""

_runtime_state: str | None = None

FATBIN_MAGIC = b"\x50\xed\x55\xba"
ELF_MAGIC = b"\x7fELF"


def ensure_cuda_runtime(cache_dir: str | Path) -> str:
    """Make TVM's CUDA runtime loadable so builds embed compiled device code.

    Parameters
    ----------
    cache_dir : str or Path
        Where the driver stub is built (``<cache>/cuda-stub/libcuda.so.1``) when needed.

    Returns
    -------
    str
        ``"driver"`` (a real NVIDIA driver) or ``"stub"``.

    Raises
    ------
    ToolchainError
        No driver and no ``gcc`` to build the stub.
    """
    global _runtime_state
    if _runtime_state:
        return _runtime_state
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        state = "driver"
    except OSError:  # no NVIDIA driver: build and load the stub
        state = "stub"
    if state == "stub":
        stub = Path(cache_dir) / "cuda-stub" / "libcuda.so.1"
        if not stub.is_file():
            if shutil.which("gcc") is None:
                raise ToolchainError("building CUDA device code without an NVIDIA driver needs "
                                     "gcc for a driver stub; install it with: apt-get install gcc")
            stub.parent.mkdir(parents=True, exist_ok=True)
            source = stub.with_suffix(".c")
            source.write_text(_STUB_SOURCE)
            tmp = stub.with_name(f".{stub.name}.tmp")
            subprocess.run(["gcc", "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(tmp),
                            str(source)], check=True, capture_output=True)
            tmp.replace(stub)
        ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)
    from tvm.backend import cuda as cuda_backend

    cuda_backend.register_backend()  # (re)loads libtvm_runtime_cuda now that libcuda resolves
    if _tvm.get_global_func("ffi.Module.create.cuda", allow_missing=True) is None:
        raise ToolchainError("TVM's CUDA runtime (libtvm_runtime_cuda.so) did not load; "
                             "is libcudart.so from the CUDA toolkit on the library path?")
    _runtime_state = state
    log.info("CUDA runtime for device-code builds: %s", state)
    return state


def gencode_flags(arch: str) -> list[str]:
    """Nvcc flags for SASS of ``arch`` plus PTX of the same compute capability.

    The PTX lets the driver JIT the kernels for newer GPUs; the SASS runs as is on ``arch``.
    """
    number = arch.removeprefix("sm_")
    return ["-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]"]


#: TVM 0.27's ``compile_cuda`` leaves out ``--use_fast_math`` when this is set.
_NO_FAST_MATH = "TVM_CUDA_NVCC_NO_FAST_MATH"


def compile_device_code(code: str, fmt: str, arch: str) -> bytes:
    """Compile CUDA C with nvcc (through TVM), IEEE-accurate: no ``--use_fast_math``.

    Parameters
    ----------
    code : str
        CUDA C source, as TVM's code generator writes it.
    fmt : {"fatbin", "cubin", "ptx"}
        Output format; a fatbin holds SASS for ``arch`` plus its PTX (:func:`gencode_flags`).
    arch : str
        e.g. ``"sm_90"``.

    Raises
    ------
    RuntimeError
        From TVM when nvcc fails.
    """
    saved = os.environ.get(_NO_FAST_MATH)
    os.environ[_NO_FAST_MATH] = "1"
    try:
        return _tvm.nvcc.compile_cuda(code, fmt, compiler="nvcc",
                                      arch=arch if fmt == "ptx" else gencode_flags(arch))
    finally:
        if saved is None:
            os.environ.pop(_NO_FAST_MATH, None)
        else:
            os.environ[_NO_FAST_MATH] = saved


@contextmanager
def nvcc_fatbin(arch: str) -> Iterator[None]:
    """Within the block, TVM compiles CUDA kernels with nvcc into a fatbin for ``arch``."""
    default = _tvm.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def compile_fatbin(code):
        return compile_device_code(code, "fatbin", arch)

    _tvm.register_global_func("tvm_callback_cuda_compile", compile_fatbin, override=True)
    try:
        yield
    finally:
        if default is not None:
            _tvm.register_global_func("tvm_callback_cuda_compile", default, override=True)


def _describe(code: bytes) -> dict:
    """Format and architectures of a CUDA device-code blob (cubin, fatbin, PTX or source)."""
    if code[:4] == ELF_MAGIC:  # cubin: SM in e_flags (bits 8-15 for ELF ABI version >= 8)
        flags = struct.unpack_from("<I", code, 48)[0]
        sm = (flags >> 8) & 0xFF if code[8] >= 8 else flags & 0xFF
        return {"format": "cubin", "sass": [f"sm_{sm}"], "ptx": []}
    if code[:4] == FATBIN_MAGIC:  # fatbin: header, then entries (kind 1 PTX, 2 SASS)
        header_size, size = struct.unpack_from("<HQ", code, 6)
        sass, ptx, offset = [], [], header_size
        while offset < header_size + size:
            kind, _, entry_header, payload = struct.unpack_from("<HHIQ", code, offset)
            sm = struct.unpack_from("<I", code, offset + 28)[0]
            (ptx if kind == 1 else sass).append(f"sm_{sm}" if kind != 1 else f"compute_{sm}")
            offset += entry_header + payload
        return {"format": "fatbin", "sass": sass, "ptx": ptx}
    if code.lstrip().startswith(b"//") and b".target" in code:
        target = code.split(b".target", 1)[1].split()[0].decode()
        return {"format": "ptx", "sass": [], "ptx": [target]}
    return {"format": "source", "sass": [], "ptx": []}


def _walk(module) -> Iterator:
    yield module
    for sub in module.imports:
        yield from _walk(sub)


def _module_code(module) -> bytes:
    """The code a CUDA module holds: binary device code, PTX, or CUDA source.

    ``inspect_source(fmt)`` returns a module's data when ``fmt`` is its format (TVM labels any
    binary ``cubin``, fatbins included) and ``""`` otherwise; binary data does not decode as
    text, and the ``UnicodeDecodeError`` carries the raw bytes.
    """
    for fmt in ("cubin", "fatbin", "ptx"):
        try:
            text = module.inspect_source(fmt)
        except UnicodeDecodeError as err:
            return bytes(err.object)
        if text:
            return text.encode()
    return module.inspect_source("").encode()


def device_code(module) -> list[dict]:
    """Describe every CUDA module in a built or loaded module tree.

    Parameters
    ----------
    module : tvm.runtime.Module
        ``executable.mod`` after ``tvm.compile``, or ``tvm.runtime.load_module(path)`` (loading
        a CUDA library needs :func:`ensure_cuda_runtime` first).

    Returns
    -------
    list of dict
        One ``{"format", "sass", "ptx", "bytes"}`` per CUDA module; format is ``cubin``,
        ``fatbin``, ``ptx`` or ``source`` (CUDA C left to compile at load time).
    """
    found = []
    for sub in _walk(module):
        if sub.kind == "cuda":
            code = _module_code(sub)
            found.append({**_describe(code), "bytes": len(code)})
    return found


def check_device_code(module, arch: str) -> dict:
    """Require compiled device code for ``arch`` in a CUDA build.

    Returns
    -------
    dict
        ``{"format", "sass", "ptx", "modules", "bytes"}`` for the manifest.

    Raises
    ------
    BuildError
        No CUDA module (the kernels would run on the CPU), CUDA source instead of device code,
        or device code for another architecture.
    """
    modules = device_code(module)
    if not modules:
        raise BuildError("the CUDA build has no CUDA device module: its kernels were compiled "
                         "for the CPU (were GPU schedules applied?)")
    for found in modules:
        if found["format"] in ("source", "ptx") or arch not in found["sass"]:
            raise BuildError(f"the CUDA build embeds {found['format']} "
                             f"(SASS {found['sass'] or 'none'}), not device code for {arch}")
    return {"format": modules[0]["format"], "sass": modules[0]["sass"],
            "ptx": modules[0]["ptx"], "modules": len(modules),
            "bytes": sum(m["bytes"] for m in modules)}
