"""The accuracy gate: a quantized artifact against the float32 model on a validation set.

Task metrics (int8 answers against float32 answers on the same inputs):

* image classification: top-1 agreement and mean top-5 overlap; drop = 1 - top-1 agreement.
  Also reported, not gated: top-1 agreement on the samples where float32 itself is sure
  (``top1_confident``: top-1 minus top-2 softmax probability >= ``CONFIDENT_MARGIN``) and
  their share (``confident_share``); near ties flip under any perturbation of the logits;
* text recognition: exact text match; drop = 1 - match rate;
* text direction: label agreement; drop = 1 - agreement;
* text detection: mean IoU of the binarized probability maps and region-count agreement;
  drop = 1 - mean IoU;
* no task: mean cosine similarity of the outputs; drop = 1 - mean cosine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
        """Whether the drop is within ``quant.max_drop``."""
        return self.drop <= self.max_drop


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


def evaluate(task: Task, run_ours: Callable[[dict], dict], run_ref: Callable[[dict], dict],
             samples: SampleSet, metadata: dict[str, str], max_drop: float) -> GateResult:
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
    """
    per_sample: list[dict[str, float]] = []
    margins: list[float] = []  # classification: float32's top-1 minus top-2 probability
    disagreements = []
    for index, inputs in enumerate(samples.samples):
        ours, ref = run_ours(inputs), run_ref(inputs)
        a, b = task_answer(task, ours, metadata), task_answer(task, ref, metadata)
        if task == Task.image_classification:
            row = {"top1": float(a["top1"] == b["top1"]),
                   "top5_overlap": len(set(a["top5"]) & set(b["top5"])) / 5}
            margins.append(_softmax_margin(next(iter(ref.values()))))
        elif task == Task.text_detection:
            _, mask_a = text_regions(next(iter(ours.values())))
            _, mask_b = text_regions(next(iter(ref.values())))
            union = np.logical_or(mask_a, mask_b).sum()
            iou = float(np.logical_and(mask_a, mask_b).sum() / union) if union else 1.0
            row = {"map_iou": iou, "regions": float(a["regions"] == b["regions"])}
        elif task in (Task.text_recognition, Task.text_direction):
            row = {"match": float(a == b)}
        else:
            row = {"cosine": float(np.mean([_cosine(ours[k], ref[k]) for k in ref]))}
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
    return GateResult(metrics, 1.0 - metrics[primary], max_drop, len(per_sample), primary,
                      disagreements, samples.description)
