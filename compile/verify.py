"""Verification: compiled outputs against ONNX Runtime's on the same input.

The reference is ONNX Runtime's CPU execution provider running the *source* ONNX file (not the
folded one), so folding, import, passes and code generation are all checked at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


def ort_session(model: str | Path | bytes, threads: int) -> ort.InferenceSession:
    """Create an ONNX Runtime CPU session with all graph optimizations and a fixed thread count.

    Parameters
    ----------
    model : str, Path or bytes
        The ONNX file, or a serialized model.
    threads : int
        ``intra_op_num_threads`` (``inter_op_num_threads`` is 1, sequential execution).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def reference_outputs(session: ort.InferenceSession,
                      inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ONNX Runtime once; outputs keyed by graph output name, in graph order."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@dataclass
class Comparison:
    """Elementwise comparison of two sets of outputs.

    ``passed`` means every element satisfies ``|ours - ref| <= atol + rtol * |ref|``
    (``numpy.allclose``'s rule), or, when a cosine threshold is given, that every output's
    cosine similarity with the reference reaches it. ``max_rel_err`` is
    ``max |ours - ref| / max |ref|`` over the worst output: the error relative to the output's
    scale.
    """

    max_abs_err: float
    max_rel_err: float
    worst_output: str
    passed: bool
    atol: float
    rtol: float
    per_output: dict
    min_cosine: float = 1.0

    def as_dict(self) -> dict:
        """Return the comparison as JSON data."""
        return asdict(self)


def compare_outputs(ours: dict[str, np.ndarray], reference: dict[str, np.ndarray],
                    atol: float, rtol: float, min_cosine: float | None = None) -> Comparison:
    """Compare outputs by name.

    Parameters
    ----------
    ours, reference : dict of str to numpy.ndarray
        Same names, shapes and dtypes.
    atol, rtol : float
        Tolerances, see :class:`Comparison`.
    min_cosine : float, optional
        Judge by cosine similarity instead (quantized models: a rounding decision flipped by
        float noise in one layer moves later layers by whole quantization steps).

    Raises
    ------
    ValueError
        If the names or shapes differ (a build/manifest bug, not a numerical difference).
    """
    if list(ours) != list(reference):
        raise ValueError(f"output names differ: {list(ours)} vs {list(reference)}")
    per_output = {}
    worst, worst_abs, worst_rel, passed, lowest_cos = "", 0.0, 0.0, True, 1.0
    for name, ref in reference.items():
        got = ours[name]
        if got.shape != ref.shape:
            raise ValueError(f"output '{name}' shape {got.shape} vs reference {ref.shape}")
        diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        max_abs = float(diff.max()) if diff.size else 0.0
        rel = max_abs / scale if scale > 0 else max_abs
        a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
        cosine = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        lowest_cos = min(lowest_cos, cosine)
        if min_cosine is None:
            ok = bool(np.all(diff <= atol + rtol * np.abs(ref.astype(np.float64))))
        else:
            ok = cosine >= min_cosine
        per_output[name] = {"max_abs_err": max_abs, "max_rel_err": rel, "cosine": cosine,
                            "passed": ok}
        passed &= ok
        if max_abs >= worst_abs:
            worst, worst_abs, worst_rel = name, max_abs, rel
    return Comparison(worst_abs, worst_rel, worst, passed, atol, rtol, per_output, lowest_cos)
