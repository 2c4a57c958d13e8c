"""The deployable side: load a compiled artifact, check its inputs, run it and time it.

Imports ``tvm.runtime`` and NumPy only; never the compiler, ONNX, Hydra or MLflow.

Examples
--------
>>> import runner
>>> model = runner.load("artifacts/ppocr_det/x86_64")          # doctest: +SKIP
>>> outputs = model.run({"x": image})                           # doctest: +SKIP
>>> model.benchmark(runs=50).p50_ms                             # doctest: +SKIP
"""

from .errors import ArtifactError, InputMismatchError, RunnerError
from .manifest import SCHEMA_VERSION, TensorSpec, read_manifest
from .model import CompiledModel, LatencyStats, load, time_callable, time_samples

__all__ = [
    "SCHEMA_VERSION",
    "ArtifactError",
    "CompiledModel",
    "InputMismatchError",
    "LatencyStats",
    "RunnerError",
    "TensorSpec",
    "load",
    "read_manifest",
    "time_callable",
    "time_samples",
]
