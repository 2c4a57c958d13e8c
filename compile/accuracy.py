"""The accuracy gate: a quantized artifact against the float32 model on a validation set.

Task metrics (int8 answers against float32 answers on the same inputs):

* image classification: top-1 agreement and mean top-5 overlap; drop = 1 - top-1 agreement.
  Also reported, not gated: top-1 agreement on the samples where float32 itself is sure
  (``top1_confident``: top-1 minus top-2 softmax probability >= ``CONFIDENT_MARGIN``) and
  their share (``confident_share``); near ties flip under any perturbation of the logits;
* text recognition: exact text match; drop = 1 - match rate. Also reported, not gated: the match
  rate once leading and trailing spaces are stripped (``match_stripped``): CTC decoding may
  read a space at the edge of a line, which is no text;
* text direction: label agreement; drop = 1 - agreement;
* text detection: mean IoU of the binarized probability maps and region-count agreement;
  drop = 1 - mean IoU;
* no task: mean cosine similarity of the outputs; drop = 1 - mean cosine.

For scale, the gate also scores the float32 model with its weights rounded to bfloat16
(:func:`bf16_weights`; ``bf16_weights_<metric>``, not gated): how much of the metric a
perturbation far smaller than int8's already costs on this validation set. On MobileNetV2 and
the 200 photo crops here it keeps 97.0 % of top-1 answers, on ppocr_rec 91.5 % of lines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

from .config import Task
from .datasets import SampleSet
from .samples import task_answer, text_regions

#: Softmax margin (top-1 minus top-2 probability of the float32 model) above which a
#: classification sample counts as one the float32 model is sure of.
CONFIDENT_MARGIN = 0.1


def _softmax_margin(logits: np.ndarray) -> float:
    z = logits.astype(np.float64).reshape(-1)
    p = np.exp(z - z.max())
    top2 = np.sort(p / p.sum())[-2:]
    return float(top2[1] - top2[0])


@dataclass
class GateResult:
    """Task metrics of a quantized model against float32, and the verdict."""

    metrics: dict[str, float]
    drop: float
    max_drop: float
    samples: int
    metric_name: str
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # the validation data, for the manifest and MLflow

    @property
    def passed(self) -> bool:
        """Whether the drop is within ``quant.max_drop``.

        With a tolerance of 1e-9: a metric of 0.98 (4 of 200 samples differ) drops
        ``1 - 0.98 = 0.020000000000000018`` in binary floating point, which is the 2 % allowed.
        """
        return self.drop <= self.max_drop + 1e-9


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def bf16_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a model with every float32 constant rounded to bfloat16 precision.

    Constants are the graph's initializers and its ``Constant`` nodes (PaddlePaddle's exports
    keep their weights in the latter). Rounding is ``ml_dtypes.bfloat16``'s (to nearest, ties
    to even: 8 significant bits); the constants stay float32 tensors and activations are not
    rounded, so this is a lower bound on what bfloat16 inference (e.g. OpenVINO's default
    reduced precision on CPUs with AVX512-BF16 or AMX) perturbs.

    Parameters
    ----------
    model : onnx.ModelProto
        A float32 model with its weights inside the file (no external data).

    Returns
    -------
    onnx.ModelProto
    """
    rounded = onnx.ModelProto()
    rounded.CopyFrom(model)
    tensors = list(rounded.graph.initializer)
    tensors += [attr.t for node in rounded.graph.node if node.op_type == "Constant"
                for attr in node.attribute if attr.name == "value"]
    for tensor in tensors:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(tensor)
            tensor.CopyFrom(numpy_helper.from_array(
                values.astype(ml_dtypes.bfloat16).astype(np.float32), tensor.name))
    return rounded


def _compare(task: Task, ours: dict, ref: dict, metadata: dict[str, str]) -> tuple[dict, Any, Any]:
    """One sample's task metric row, and both task answers."""
    a, b = task_answer(task, ours, metadata), task_answer(task, ref, metadata)
    if task == Task.image_classification:
        row = {"top1": float(a["top1"] == b["top1"]),
               "top5_overlap": len(set(a["top5"]) & set(b["top5"])) / 5}
    elif task == Task.text_detection:
        _, mask_a = text_regions(next(iter(ours.values())))
        _, mask_b = text_regions(next(iter(ref.values())))
        union = np.logical_or(mask_a, mask_b).sum()
        iou = float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0
        row = {"map_iou": iou, "regions": float(a["regions"] == b["regions"])}
    elif task == Task.text_recognition:
        texts = [answer.get("text") for answer in (a, b)]
        stripped = None not in texts and texts[0].strip() == texts[1].strip()
        row = {"match": float(a == b), "match_stripped": float(a == b or stripped)}
    elif task == Task.text_direction:
        row = {"match": float(a == b)}
    else:
        row = {"cosine": float(np.mean([_cosine(ours[k], ref[k]) for k in ref]))}
    return row, a, b


def evaluate(task: Task, run_ours: Callable[[dict], dict], run_ref: Callable[[dict], dict],
             samples: SampleSet, metadata: dict[str, str], max_drop: float,
             run_bf16: Callable[[dict], dict] | None = None) -> GateResult:
    """Run both models on every validation sample and compute the task metric.

    Parameters
    ----------
    task : Task
    run_ours, run_ref : callable
        ``inputs -> outputs`` (dicts of numpy arrays, outputs in graph order): the quantized
        artifact and the float32 reference.
    samples : SampleSet
        Validation inputs (disjoint from calibration).
    metadata : dict
        The ONNX metadata (the recognizer's dictionary).
    max_drop : float
        The gate's threshold.
    run_bf16 : callable, optional
        The float32 model with bfloat16-rounded weights (:func:`bf16_weights`), scored against
        the reference the same way: ``metrics["bf16_weights_<metric>"]``.
    """
    per_sample: list[dict[str, float]] = []
    bf16_rows: list[dict[str, float]] = []
    margins: list[float] = []  # classification: float32's top-1 minus top-2 probability
    disagreements = []
    for index, inputs in enumerate(samples.samples):
        ref = run_ref(inputs)
        row, a, b = _compare(task, run_ours(inputs), ref, metadata)
        if task == Task.image_classification:
            margins.append(_softmax_margin(next(iter(ref.values()))))
        if run_bf16 is not None:
            bf16_rows.append(_compare(task, run_bf16(inputs), ref, metadata)[0])
        per_sample.append(row)
        if min(row.values()) < 1.0 and len(disagreements) < 20:
            disagreements.append({"sample": index, "quantized": a, "float32": b, **row})
    metrics = {f"{k}": float(np.mean([r[k] for r in per_sample])) for k in per_sample[0]}
    if margins:
        sure = [r["top1"] for r, m in zip(per_sample, margins, strict=True)
                if m >= CONFIDENT_MARGIN]
        metrics["confident_share"] = len(sure) / len(per_sample)
        if sure:
            metrics["top1_confident"] = float(np.mean(sure))
    primary = {Task.image_classification: "top1", Task.text_detection: "map_iou",
               Task.text_recognition: "match", Task.text_direction: "match"}.get(task, "cosine")
    if bf16_rows:
        metrics[f"bf16_weights_{primary}"] = float(np.mean([r[primary] for r in bf16_rows]))
    return GateResult(metrics, 1.0 - metrics[primary], max_drop, len(per_sample), primary,
                      disagreements, samples.description)
