"""Peers the benchmark compares with: ONNX Runtime and OpenVINO, configured like for like.

Both run the source ONNX file in float32 with an explicit thread count. OpenVINO's CPU plugin
runs bf16 by default on CPUs with AVX-512 BF16 or AMX; its inference precision is set to f32
explicitly so fp32 is compared with fp32. The int8 benchmark adds OpenVINO at its default
precision (:func:`openvino_default_precision`) where that is not f32: the reduced-precision
peer of issue 4's speed goal.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .verify import ort_session


def onnxruntime_runner(onnx_path: Path, threads: int,
                       inputs: dict[str, np.ndarray]) -> Callable[[], object]:
    """Return a callable that runs ONNX Runtime once on ``inputs`` at ``threads`` threads."""
    session = ort_session(onnx_path, threads)
    return lambda: session.run(None, inputs)


def openvino_runner(onnx_path: Path, threads: int, inputs: dict[str, np.ndarray],
                    precision: str = "f32") -> Callable[[], object]:
    """Return a callable that runs OpenVINO's CPU plugin once at ``threads`` threads.

    Parameters
    ----------
    precision : str
        OpenVINO's ``INFERENCE_PRECISION_HINT`` (``f32``, ``bf16``, ``f16``).

    Raises
    ------
    ConfigError
        OpenVINO is not installed (``pip install -e '.[baselines]'``).
    """
    try:
        import openvino as ov
    except ImportError:
        raise ConfigError("the openvino baseline needs the openvino package: pip install -e "
                          "'.[baselines]' (or drop it from bench.baselines)") from None
    core = ov.Core()
    compiled = core.compile_model(str(onnx_path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision,
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        "NUM_STREAMS": 1,
    })
    request = compiled.create_infer_request()
    return lambda: request.infer(inputs)


def openvino_default_precision() -> str | None:
    """OpenVINO CPU plugin's default inference precision on this machine (None: not installed).

    ``bf16`` on CPUs with AVX-512 BF16 or AMX (e.g. AMD Zen 4/5), else ``f32``.
    """
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()


def openvino_version() -> str | None:
    """OpenVINO's version, or None when it is not installed."""
    try:
        import openvino as ov
    except ImportError:
        return None
    return ov.get_version()
