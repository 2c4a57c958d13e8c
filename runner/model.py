"""Load a compiled artifact and run it with TVM's runtime alone.

Only ``tvm.runtime`` (TVM's runtime library, not its compiler) and NumPy are imported here, so a
deployment machine needs neither ONNX, nor the compiler, nor the tracking stack.
"""

from __future__ import annotations

import os
import platform
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, InputMismatchError
from .manifest import TensorSpec, elf_machine, read_manifest

_MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


def host_arch() -> str:
    """Return this machine's architecture as artifacts name it (``x86_64`` or ``aarch64``)."""
    machine = platform.machine().lower()
    return _MACHINE_ALIASES.get(machine, machine)


def _import_tvm_runtime(num_threads: int | None):
    """Import TVM with its runtime library only (unless the compiler already loaded TVM).

    ``TVM_USE_RUNTIME_LIB=1`` makes ``import tvm`` load ``libtvm_runtime`` alone (about half the
    import time and memory; ../shared/TVM_0_27.md). ``TVM_NUM_THREADS`` sizes TVM's thread pool
    for threads that start a pool later (TVM's default is half the logical cores); the calling
    thread's pool is sized by ``_configure_thread_pool``.
    """
    loaded = "tvm" in sys.modules
    if num_threads:
        os.environ["TVM_NUM_THREADS"] = str(num_threads)
    if not loaded:
        saved = os.environ.get("TVM_USE_RUNTIME_LIB")
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
        # apache-tvm-ffi imports torch eagerly when it is installed (1-2 s, hundreds of MB) for
        # tensor interop the runner does not use: hide it during the import only.
        hide_torch = "torch" not in sys.modules
        if hide_torch:
            sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            import tvm.runtime.vm  # noqa: F401
        finally:
            if hide_torch:
                del sys.modules["torch"]
            if saved is None:
                os.environ.pop("TVM_USE_RUNTIME_LIB", None)
            else:
                os.environ["TVM_USE_RUNTIME_LIB"] = saved
    import tvm
    import tvm.runtime.vm  # noqa: F401  (not imported by ``import tvm`` in runtime-only mode)

    if num_threads:
        _configure_thread_pool(tvm, num_threads)
    return tvm


def _cuda_device(tvm, artifact_dir: Path):
    """Return ``tvm.cuda(0)``, loading TVM's CUDA runtime library first where needed.

    ``import tvm`` in runtime-only mode loads no device backend: without this, the CUDA device
    API is missing ("Device API cuda is not enabled", seen on an H100 on 2026-11-23).
    ``libtvm_runtime_cuda`` needs the NVIDIA driver (``libcuda.so.1``) and the CUDA 13 runtime
    (``libcudart.so.13``).

    Raises
    ------
    ArtifactError
        The CUDA runtime does not load, or this machine has no CUDA GPU.
    """
    import tvm_ffi

    if tvm_ffi.get_global_func("device_api.cuda", allow_missing=True) is None:
        from tvm.base import _LOADED_LIBS
        from tvm_ffi.libinfo import load_lib_ctypes

        runtime_dir = Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent
        try:
            _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
                package="tvm", target_name="tvm_runtime_cuda", extra_lib_paths=[runtime_dir],
                mode="RTLD_LOCAL")
        except (OSError, RuntimeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ArtifactError(
                f"{artifact_dir} is built for CUDA and TVM's CUDA runtime did not load ({first}): "
                "this machine needs an NVIDIA driver (libcuda.so.1) and the CUDA 13 runtime "
                "(libcudart.so.13) on its library path (LD_LIBRARY_PATH)") from None
    dev = tvm.cuda(0)
    if not dev.exist:
        raise ArtifactError(f"{artifact_dir} is built for CUDA and this machine has no CUDA GPU")
    return dev


def _configure_thread_pool(tvm, num_threads: int) -> None:
    """Use ``num_threads`` workers of the calling thread's TVM pool, one per allowed CPU.

    TVM fixes a pool's worker count when the pool starts (``src/runtime/thread_pool.cc``:
    ``UpdateWorkerConfiguration`` takes the minimum with it) and has no reset, so a pool first
    configured for 1 thread stays at 1 when 2 are asked later, while still paying the pool's
    hand-off. The pool is therefore always configured over every CPU this process may use, and
    ``num_threads`` of them run the work.

    Warns
    -----
    RuntimeWarning
        TVM's pool had already started, smaller, before this call (by code outside the runner):
        fewer threads than asked will run.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pool = allowed or list(range(os.cpu_count() or num_threads))
    while len(pool) < num_threads:  # more threads than CPUs: they share the CPUs
        pool += pool[:num_threads - len(pool)]
    # Affinity mode -2 pins one worker per listed CPU, and the calling thread too: restore
    # the caller's mask, or everything it starts later (ONNX Runtime's threads, say) would
    # inherit a single CPU.
    tvm.get_global_func("runtime.config_threadpool")(-2, num_threads, [str(c) for c in pool])
    if allowed:
        os.sched_setaffinity(0, allowed)
    used = tvm.get_global_func("runtime.NumThreads")()
    if used != num_threads:
        warnings.warn(f"TVM's thread pool in this process already runs {used} workers and "
                      f"cannot grow to {num_threads}: load the model in a fresh process",
                      RuntimeWarning, stacklevel=4)


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles of repeated runs, in milliseconds.

    Attributes
    ----------
    p50_ms, p90_ms, p99_ms, mean_ms, min_ms : float
        Percentiles (NumPy's linear interpolation), mean and minimum of the timed runs.
    runs : int
        Number of timed runs (after ``warmup`` untimed ones).
    warmup : int
        Number of untimed runs before timing.
    """

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    runs: int
    warmup: int

    @classmethod
    def from_samples(cls, samples_s: list[float], warmup: int) -> LatencyStats:
        """Summarise per-run wall times given in seconds."""
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(ms.mean()), float(ms.min()),
                   len(samples_s), warmup)

    def as_metrics(self, prefix: str = "latency_ms") -> dict[str, float]:
        """Return ``{prefix}_p50`` … ``{prefix}_min`` for metric logging."""
        return {f"{prefix}_p50": self.p50_ms, f"{prefix}_p90": self.p90_ms,
                f"{prefix}_p99": self.p99_ms, f"{prefix}_mean": self.mean_ms,
                f"{prefix}_min": self.min_ms}

    def as_dict(self) -> dict[str, float | int]:
        """Return all fields as JSON data (``p50_ms``, ..., ``runs``, ``warmup``)."""
        return asdict(self)


def time_callable(fn, runs: int, warmup: int) -> LatencyStats:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls (``time.perf_counter``).

    Raises
    ------
    ValueError
        If ``runs`` < 1 or ``warmup`` < 0.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs} warmup={warmup}")
    for _ in range(warmup):
        fn()
    return LatencyStats.from_samples(time_samples(fn, runs), warmup)


def time_samples(fn, runs: int) -> list[float]:
    """Wall time of each of ``runs`` calls of ``fn()``, seconds (``time.perf_counter``)."""
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


class CompiledModel:
    """A loaded artifact: checked inputs in, NumPy outputs out.

    Use :func:`load` to create one.

    Attributes
    ----------
    manifest : dict
        The artifact's manifest.
    input_info, output_info : list of TensorSpec
        Names, static shapes and dtypes of the model's inputs and outputs.
    device : str
        ``"cpu"`` or ``"cuda"``.
    """

    def __init__(self, artifact_dir: Path, manifest: dict[str, Any], device: str,
                 num_threads: int | None):
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.device = device
        self.input_info = [TensorSpec.from_json(e) for e in manifest["inputs"]]
        self.output_info = [TensorSpec.from_json(e) for e in manifest["outputs"]]
        tvm = _import_tvm_runtime(num_threads)
        self._tvm = tvm
        self._dev = _cuda_device(tvm, artifact_dir) if device == "cuda" else tvm.cpu(0)
        library = artifact_dir / manifest["library"]["file"]
        try:
            lib = tvm.runtime.load_module(str(library))
            self._vm = tvm.runtime.vm.VirtualMachine(lib, self._dev)
        except Exception as err:  # TVM raises its own error types from C++
            first = str(err).splitlines()[0]
            raise ArtifactError(f"TVM could not load {library}: {first}") from None
        self._main = self._vm["main"]

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Check inputs against the manifest and return them in the model's order.

        Parameters
        ----------
        inputs : mapping of str to numpy.ndarray
            One array per model input, keyed by input name, with the manifest's shape and dtype.

        Returns
        -------
        list of numpy.ndarray
            C-contiguous arrays in the order of ``input_info``.

        Raises
        ------
        InputMismatchError
            Listing every problem at once: missing or unknown names, wrong shapes, wrong dtypes.
        """
        problems = []
        expected = {spec.name for spec in self.input_info}
        unknown = sorted(set(inputs) - expected)
        if unknown:
            problems.append(f"unknown input(s) {unknown} (the model takes {sorted(expected)})")
        ordered = []
        for spec in self.input_info:
            if spec.name not in inputs:
                problems.append(f"missing input '{spec.name}' {spec.dtype}{list(spec.shape)}")
                continue
            array = np.asarray(inputs[spec.name])
            if tuple(array.shape) != spec.shape:
                problems.append(f"input '{spec.name}' has shape {list(array.shape)}, "
                                f"the model takes {list(spec.shape)}")
            if array.dtype != np.dtype(spec.dtype):
                problems.append(f"input '{spec.name}' has dtype {array.dtype}, "
                                f"the model takes {spec.dtype}")
            ordered.append(np.ascontiguousarray(array))
        if problems:
            raise InputMismatchError("; ".join(problems))
        return ordered

    def _to_device(self, arrays: list[np.ndarray]) -> list[Any]:
        return [self._tvm.runtime.tensor(a, self._dev) for a in arrays]

    def _invoke(self, tensors: list[Any]) -> Any:
        result = self._main(*tensors)
        if self.device == "cuda":
            self._dev.sync()
        return result

    def _unpack(self, result: Any) -> dict[str, np.ndarray]:
        values = [result] if hasattr(result, "numpy") else list(result)
        if len(values) != len(self.output_info):
            raise ArtifactError(f"the library returned {len(values)} outputs, the manifest lists "
                                f"{len(self.output_info)}; rebuild the artifact")
        return {spec.name: value.numpy()
                for spec, value in zip(self.output_info, values, strict=True)}

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model once.

        Parameters
        ----------
        inputs : mapping of str to numpy.ndarray
            See :meth:`check_inputs`.

        Returns
        -------
        dict of str to numpy.ndarray
            Outputs keyed by the manifest's output names, shapes and dtypes as in ``output_info``.

        Raises
        ------
        InputMismatchError
            If the inputs do not match the manifest.
        """
        return self._unpack(self._invoke(self._to_device(self.check_inputs(inputs))))

    def benchmark(self, runs: int = 50, warmup: int = 5,
                  inputs: Mapping[str, np.ndarray] | None = None) -> LatencyStats:
        """Time the model on inputs already on the device.

        Each timed run is one call of the VM's ``main`` (plus a device sync on CUDA), measured
        with ``time.perf_counter``; input upload and output download are excluded.

        Parameters
        ----------
        runs : int
            Timed runs, at least 1.
        warmup : int
            Untimed runs first (first-call allocation, caches).
        inputs : mapping of str to numpy.ndarray, optional
            Inputs as in :meth:`run`; zeros of the right shape and dtype when omitted.

        Returns
        -------
        LatencyStats
            p50/p90/p99 latency in milliseconds.
        """
        if inputs is None:
            inputs = {s.name: np.zeros(s.shape, dtype=s.dtype) for s in self.input_info}
        tensors = self._to_device(self.check_inputs(inputs))
        return time_callable(lambda: self._invoke(tensors), runs=runs, warmup=warmup)


def load(artifact_dir: str | Path, device: str | None = None,
         num_threads: int | None = None) -> CompiledModel:
    """Load an artifact folder after checking its manifest and library.

    Parameters
    ----------
    artifact_dir : str or Path
        Folder with ``manifest.json`` and ``model.so`` (``artifacts/<model>/<target>/``).
    device : {"cpu", "cuda"}, optional
        Where to run; defaults to the device the artifact was built for.
    num_threads : int, optional
        Size of TVM's CPU thread pool; TVM's own default (half the logical cores) when omitted.

    Returns
    -------
    CompiledModel

    Raises
    ------
    ArtifactError
        Missing or tampered files, another schema version, a library built for another
        architecture or device than this machine offers.
    """
    folder = Path(artifact_dir)
    manifest = read_manifest(folder)
    built_for = manifest["device"]
    device = device or built_for
    if device not in ("cpu", "cuda"):
        raise ArtifactError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device != built_for:
        raise ArtifactError(f"{folder} is built for device '{built_for}', not '{device}'")
    arch = elf_machine(folder / manifest["library"]["file"])
    if arch != host_arch():
        raise ArtifactError(f"{folder} is built for {arch} and this machine is {host_arch()}; "
                            f"run it on a {arch} machine")
    return CompiledModel(folder, manifest, device, num_threads)
