"""The main job: ONNX → Relax → passes → (tuned) build → artifact → verified through the runner.

``run_compile`` is the library entry point; ``python -m compile`` composes the config with Hydra,
opens the MLflow run and calls it.

With ``quant=int8`` the artifact is checked twice: against ONNX Runtime running the same QDQ
model (same quantization, so within one quantization step), and by the accuracy gate against
the float32 model on the validation set. A failed gate writes the per-layer error report and,
with ``quant.keep_float_worst=N``, retries once with the N worst layers kept in float.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

import runner
from runner.model import host_arch

from . import build as build_stage
from .accuracy import GateResult, bf16_weights, evaluate
from .artifact import StagedArtifact, build_manifest, package_version, write_json_atomic
from .config import CompileJob, QuantScheme, host_threads
from .datasets import SampleSet, load_samples
from .errors import QuantizationError, VerificationError
from .pipeline import code_sha256, post_tuning_pass_names
from .prepare import (
    PreparedModel,
    adopt_database_cpu,
    database_folder,
    find_database,
    prepare_model,
    resolve_layout,
    tuning_section,
    variant_path,
)
from .quantize import layer_report, weights_bytes, worst_layers
from .samples import answers_agree
from .targets import check_toolchain, host_runnable, library_arch
from .tracking import Tracker
from .verify import compare_outputs, ort_session, reference_outputs

log = logging.getLogger(__name__)


@dataclass
class CompileResult:
    """What a compile job produced and measured (also logged to MLflow).

    Times are wall-clock seconds; latencies are milliseconds at ``threads`` threads, batch as
    in the model's input shapes.
    """

    model: str
    target: str
    artifact_dir: Path
    target_dict: dict
    kernels_before_fusion: int
    kernels_after_fusion: int
    metrics: dict[str, float] = field(default_factory=dict)
    verification: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    threads: int = 1
    run_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    layout: str = ""  # the convolution layout, and why where target.layout was auto


def _verify(job: CompileJob, stage: Path, prepared: PreparedModel, threads: int) -> dict[str, Any]:
    """Run the staged artifact through the runner and compare with ONNX Runtime.

    Float32 models are compared with the source ONNX elementwise; int8 models with the QDQ
    model (the same quantization), and fp16 models with the float32 model, by cosine
    similarity and the task answer.
    """
    imported, sample = prepared.imported, prepared.sample
    quantized = prepared.quantized
    reference_path = quantized.path if quantized else imported.onnx_path
    session = ort_session(reference_path, threads)
    reference = reference_outputs(session, sample.inputs)
    model = runner.load(stage, num_threads=threads)
    ours = model.run(sample.inputs)
    reduced = quantized is not None or job.quant.scheme == QuantScheme.fp16
    min_cosine = job.quant.verify_cosine if reduced else None
    comparison = compare_outputs(ours, reference, job.model.atol, job.model.rtol, min_cosine)
    answer = answers_agree(job.model.task, ours, reference, imported.metadata)
    result: dict[str, Any] = {
        "status": "passed" if comparison.passed and answer["agree"] else "failed",
        "reference": (f"onnxruntime {package_version('onnxruntime')} CPUExecutionProvider"
                      + (" on the QDQ model" if quantized else "")),
        "input": sample.source,
        "expected": sample.expected,
        **comparison.as_dict(),
        "task": job.model.task.name,
        "answer": answer,
    }
    if job.verify.bench_runs > 0:
        # Bounded time: slow (untuned) models get fewer runs, at least 3.
        once = runner.time_callable(lambda: model.run(sample.inputs), runs=1, warmup=0)
        runs = max(3, min(job.verify.bench_runs, int(job.verify.bench_max_s * 1e3 / once.p50_ms)))
        ours_lat = model.benchmark(runs, job.verify.warmup, sample.inputs)
        ort_lat = runner.time_callable(lambda: session.run(None, sample.inputs), runs,
                                       job.verify.warmup)
        result["latency"] = {"tvm": ours_lat.as_dict(), "onnxruntime": ort_lat.as_dict(),
                             "threads": threads}
    return result


def _gate(job: CompileJob, stage: Path, prepared: PreparedModel, threads: int,
          validation: SampleSet) -> GateResult:
    """The accuracy gate: the staged int8/fp16 artifact against ONNX Runtime's float32 model."""
    model = runner.load(stage, num_threads=threads)
    session = ort_session(prepared.imported.onnx_path, threads)
    rounded = bf16_weights(onnx.load(str(prepared.imported.onnx_path)))
    bf16_session = ort_session(rounded.SerializeToString(), threads)
    log.info("accuracy gate on %d validation samples", len(validation))
    result = evaluate(job.model.task, model.run, lambda x: reference_outputs(session, x),
                      validation, prepared.imported.metadata, job.quant.max_drop,
                      run_bf16=lambda x: reference_outputs(bf16_session, x))
    result.metrics["validation_samples"] = len(validation)
    return result


def run_compile(job: CompileJob, tracker: Tracker | None = None) -> CompileResult:
    """Compile one model for one target, verify it, write the artifact and log the run.

    Parameters
    ----------
    job : CompileJob
        The resolved configuration.
    tracker : Tracker, optional
        The MLflow run to log into (``None``: no logging).

    Returns
    -------
    CompileResult

    Raises
    ------
    PipelineError
        Any expected failure (subclasses name the stage): bad config, model fetch, unsupported
        model, missing toolchain, calibration data, build, tuning database, verification or the
        accuracy gate. The previous artifact, if any, is left as it was.
    """
    tracker = tracker or Tracker(None)
    check_toolchain(job.target)  # before any work: a missing cross compiler fails in a second
    job, layout = resolve_layout(job)
    job, adopted = adopt_database_cpu(job)
    try:
        result = _compile_once(job, tracker, exclude=[])
    except QuantizationError as err:
        worst = getattr(err, "worst_layers", None)
        if not (worst and job.quant.keep_float_worst > 0):
            raise
        log.warning("accuracy gate failed; retrying with %d layers in float: %s",
                    len(worst), worst)
        result = _compile_once(job, tracker, exclude=worst, attempt=2)
    if adopted:
        result.warnings.insert(0, adopted)
    result.layout = layout or job.target.layout.name
    return result


def _compile_once(job: CompileJob, tracker: Tracker, exclude: list[str],
                  attempt: int = 1) -> CompileResult:
    threads = job.threads or host_threads()
    cfg_t, cfg_m, scheme = job.target, job.model, job.quant.scheme
    prepared = prepare_model(cfg_m, cfg_t, job.quant, job.paths, job.dump_ir, exclude)
    imported, metrics = prepared.imported, dict(prepared.metrics)
    before, after = prepared.kernels["legalize"], prepared.kernels["fuse"]

    warnings: list[str] = []
    applied = None
    if job.tuning.apply:
        folder = database_folder(job.paths, str(cfg_m.name), cfg_t, scheme,
                                 job.tuning.database)
        applied, warnings = find_database(prepared, folder, explicit=bool(job.tuning.database))
    mod = applied.mod if applied else prepared.mod
    tuning = tuning_section(applied, after, Path(job.paths.root))
    if cfg_t.device == "cpu" and tuning["tasks_tuned"] < tuning["tasks_total"]:
        warnings.append(f"{tuning['tasks_total'] - tuning['tasks_tuned']} of "
                        f"{tuning['tasks_total']} kernels have no tuned schedule: expect ONNX "
                        "Runtime to be faster on CPU (tune with python -m compile.tune)")
    quantization = _quantization_section(job, prepared, exclude)

    built = build_stage.build(mod, cfg_t, prepared.target, job.paths.cache_dir)
    metrics["compile_s"] = built.compile_s
    final_dir = variant_path(job.paths.artifacts_dir, str(cfg_m.name), cfg_t, scheme)
    with StagedArtifact(final_dir) as stage:
        start = time.perf_counter()
        build_stage.export(built.executable, stage.library, cfg_t)
        metrics["export_s"] = time.perf_counter() - start
        if prepared.quantized is not None:
            if library_arch(cfg_t) == "x86_64":
                quantization["instructions"] = build_stage.instruction_counts(stage.library)
            quantization["library_bytes"] = stage.library.stat().st_size
            quantization["library_vs_fp32_weights"] = round(
                quantization["library_bytes"] / quantization["fp32_weights_bytes"], 4)
        pipeline = prepared.pipeline
        manifest_args = dict(
            model_name=str(cfg_m.name), onnx_path=imported.onnx_path,
            onnx_sha256=imported.onnx_sha256, opset=imported.opset, inputs=imported.inputs,
            outputs=imported.outputs, target_name=cfg_t.name, target=prepared.target_json,
            device=cfg_t.device, library=stage.library, library_arch=library_arch(cfg_t),
            device_code=built.device_code,
            pipeline={"name": pipeline.name, "fingerprint": pipeline.fingerprint,
                      "code_sha256": code_sha256(), "passes": pipeline.pass_names,
                      "max_unroll_steps": cfg_t.max_unroll_steps,
                      "post_tuning_passes": post_tuning_pass_names(cfg_t),
                      "layout": cfg_t.layout.name},
            quantization=quantization, tuning=tuning)
        write_json_atomic(stage.manifest, build_manifest(**manifest_args,
                                                         verification={"status": "pending"}))
        runnable = job.verify.enabled and host_runnable(cfg_t)
        if runnable:
            verification = _verify(job, stage.path, prepared, threads)
        else:
            if not job.verify.enabled:
                reason = "verify.enabled=false"
            elif library_arch(cfg_t) != host_arch():
                reason = (f"an {library_arch(cfg_t)} artifact does not run on this "
                          f"{host_arch()} machine")
            else:
                reason = "this machine has no CUDA GPU to run it"
            verification = {"status": "skipped", "reason": reason}
        gate = None
        if (runnable and scheme in (QuantScheme.int8, QuantScheme.fp16)
                and verification["status"] == "passed"):
            validation = load_samples(job.quant.validation, job.model, imported.inputs,
                                      job.paths.cache_dir)
            gate = _gate(job, stage.path, prepared, threads, validation)
            quantization["gate"] = {"passed": gate.passed, "metric": gate.metric_name,
                                    "drop": gate.drop, "max_drop": gate.max_drop,
                                    "validation": gate.source, **gate.metrics}
        write_json_atomic(stage.manifest, build_manifest(**manifest_args,
                                                         verification=verification))
        result = CompileResult(str(cfg_m.name), cfg_t.name, final_dir, prepared.target_json,
                               before, after, metrics, verification, tuning, quantization,
                               threads, tracker.run_id, warnings)
        _log_run(tracker, job, result, imported, stage.manifest, attempt)
        if verification["status"] == "failed":
            raise VerificationError(_failure_line(verification))
        if gate is not None and not gate.passed:
            raise _gate_failure(job, prepared, gate, validation, tracker, attempt)
        stage.commit()
    return result


def _quantization_section(job: CompileJob, prepared: PreparedModel,
                          exclude: list[str]) -> dict[str, Any]:
    if prepared.quantized is None:
        return {"scheme": job.quant.scheme.name}
    q = prepared.quantized
    packed, saturating = prepared.pipeline.packed_ops
    return {"scheme": "int8", "format": f"QDQ ONNX by {q.settings['calibrator']}",
            "settings": q.settings, "calibration": prepared.calibration.description,
            "weight_rounding": q.rounding,
            "quantized_nodes": len(q.quantized), "float_nodes": len(q.kept_float),
            "integer_ops": len(prepared.pipeline.integer_ops),
            "dot_intrinsic": prepared.pipeline.dot_intrinsic,
            "packed_pointwise": packed, "saturating_pointwise": saturating,
            "kept_float": sorted({*job.quant.exclude, *exclude}),
            "fp32_weights_bytes": weights_bytes(prepared.fp32_onnx),
            "int8_model_weights_bytes": weights_bytes(q.model)}


def _gate_failure(job: CompileJob, prepared: PreparedModel, gate: GateResult,
                  validation: SampleSet, tracker: Tracker, attempt: int) -> QuantizationError:
    if prepared.quantized is None:  # fp16: no quantized layers to report or keep in float
        return QuantizationError(
            f"{job.quant.scheme.name} accuracy gate failed: {gate.metric_name} drop "
            f"{gate.drop:.2%} > quant.max_drop {gate.max_drop:.2%} on {gate.samples} validation "
            "samples; raise quant.max_drop or build float32 (quant=none)")
    report = layer_report(prepared.fp32_onnx, prepared.quantized.path, validation)
    tracker.log_dict(report, f"layer_report_attempt{attempt}.json")
    worst = worst_layers(report, job.quant.keep_float_worst or 3)
    shown = ", ".join(f"{r['node']} ({r['sensitivity_db']:+.1f} dB)" for r in report
                      if r["node"] in worst)
    bf16 = gate.metrics.get(f"bf16_weights_{gate.metric_name}")
    scale = ("" if bf16 is None else
             f" (float32 weights rounded to bfloat16 alone: drop {1 - bf16:.2%})")
    error = QuantizationError(
        f"int8 accuracy gate failed: {gate.metric_name} drop {gate.drop:.2%} > quant.max_drop "
        f"{gate.max_drop:.2%} on {gate.samples} validation samples{scale}; layers that hurt most "
        f"(output SQNR gained when each alone stays float): {shown}; keep them in float with "
        "quant.keep_float_worst=N or quant.exclude=[...]"
        + ("" if job.quant.activation_type == "int16" else
           ", or store activations in 16 bits with quant.activation_type=int16 (mobilenet_v2: "
           "2 % top-1 drop instead of 10.5 %, README)"))
    error.worst_layers = worst if attempt == 1 else None  # type: ignore[attr-defined]
    return error


def _failure_line(verification: dict[str, Any]) -> str:
    answer = verification["answer"]
    parts = [f"max abs error {verification['max_abs_err']:.3g} "
             f"(max rel {verification['max_rel_err']:.3g}, cosine "
             f"{verification['min_cosine']:.5f}) in output '{verification['worst_output']}', "
             f"tolerance atol={verification['atol']} rtol={verification['rtol']}"]
    if not answer["agree"]:
        parts.append(f"task answer {answer['ours']} vs ONNX Runtime's {answer['reference']}")
    return ("verification against ONNX Runtime failed: " + "; ".join(parts) +
            "; the artifact was not written")


def _log_run(tracker: Tracker, job: CompileJob, result: CompileResult, imported,
             manifest_path: Path, attempt: int) -> None:
    if not tracker.enabled:
        return
    tracker.set_tags({"job": "compile", "model": result.model, "target": result.target,
                      "verification": result.verification["status"],
                      "tuning_database": result.tuning["database_sha256"][:16],
                      "quant": job.quant.scheme.name, "attempt": attempt})
    quant = result.quantization
    params: dict[str, Any] = {
        "model": {"name": result.model, "onnx_sha256": imported.onnx_sha256,
                  "opset": imported.opset, "task": job.model.task.name,
                  "inputs": [s.to_json() for s in imported.inputs]},
        "target": {"name": result.target, "dict": result.target_dict,
                   "layout": job.target.layout.name},
        "quant": {"scheme": job.quant.scheme.name}, "threads": result.threads,
        "tuning": {k: v for k, v in result.tuning.items() if k != "untuned_tasks"}}
    if "settings" in quant and attempt == 1:
        params["quant"] = {"scheme": "int8", **quant["settings"],
                           "calibration_data": quant["calibration"],
                           "max_drop": job.quant.max_drop,
                           "dot_intrinsic": quant["dot_intrinsic"] or "none"}
    if attempt == 1:
        tracker.log_params(params)
    elif quant.get("kept_float"):  # the retry's layers kept in float (params are write-once)
        tracker.log_params({"quant": {"kept_float": quant["kept_float"]}})
    metrics = dict(result.metrics)
    ver = result.verification
    if ver["status"] != "skipped":
        metrics.update(max_abs_err=ver["max_abs_err"], max_rel_err=ver["max_rel_err"],
                       task_answer_agrees=float(ver["answer"]["agree"]))
        latency = ver.get("latency")
        if latency:
            for prefix, stats in (("latency_ms", latency["tvm"]),
                                  ("ort_latency_ms", latency["onnxruntime"])):
                metrics.update({f"{prefix}_{q}": stats[f"{q}_ms"] for q in ("p50", "p90", "p99")})
            metrics["latency_ratio_vs_ort"] = (latency["tvm"]["p50_ms"] /
                                               latency["onnxruntime"]["p50_ms"])
    metrics.update(tasks_total=result.tuning["tasks_total"],
                   tasks_tuned=result.tuning["tasks_tuned"])
    if "settings" in quant:
        metrics.update({k: quant[k] for k in ("quantized_nodes", "integer_ops",
                                              "packed_pointwise", "fp32_weights_bytes",
                                              "library_bytes")})
        metrics["library_vs_fp32_weights"] = quant["library_vs_fp32_weights"]
        rounding = quant.get("weight_rounding", {})
        if rounding.get("method") == "gptq":
            metrics.update({f"gptq_{k}": rounding[k]
                            for k in ("layers", "biases", "output_error_ratio")})
        tracker.log_text(quant["calibration"], "calibration_data.txt")
    if "gate" in quant:  # int8 and fp16
        gate = quant["gate"]
        metrics.update({f"gate_{k}": v for k, v in gate.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
        tracker.log_text(gate["validation"], "validation_data.txt")
    tracker.log_metrics(metrics, step=attempt - 1)
    tracker.log_artifact(manifest_path)
    tracker.log_dict({"op_counts": imported.op_counts}, "onnx_ops.json")
