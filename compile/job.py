"""The main job: ONNX → Relax → passes → (tuned) build → artifact → verified through the runner.

``run_compile`` is the library entry point; ``python -m compile`` composes the config with Hydra,
opens the MLflow run and calls it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runner
from runner.model import host_arch

from . import build as build_stage
from .artifact import StagedArtifact, build_manifest, package_version, write_json_atomic
from .config import CompileJob, host_threads
from .errors import VerificationError
from .prepare import database_folder, find_database, prepare_model, tuning_section
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
    threads: int = 1
    run_id: str | None = None
    warnings: list[str] = field(default_factory=list)


def _verify(job: CompileJob, stage: Path, imported, sample, threads: int) -> dict[str, Any]:
    """Run the staged artifact through the runner and compare with ONNX Runtime."""
    session = ort_session(imported.onnx_path, threads)
    reference = reference_outputs(session, sample.inputs)
    model = runner.load(stage, num_threads=threads)
    ours = model.run(sample.inputs)
    comparison = compare_outputs(ours, reference, job.model.atol, job.model.rtol)
    answer = answers_agree(job.model.task, ours, reference, imported.metadata)
    result: dict[str, Any] = {
        "status": "passed" if comparison.passed and answer["agree"] else "failed",
        "reference": f"onnxruntime {package_version('onnxruntime')} CPUExecutionProvider",
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
        model, missing toolchain, build, tuning database or verification. The previous artifact,
        if any, is left as it was.
    """
    tracker = tracker or Tracker(None)
    threads = job.threads or host_threads()
    cfg_t, cfg_m = job.target, job.model
    check_toolchain(cfg_t)  # before any work: a missing cross compiler fails in a second
    prepared = prepare_model(cfg_m, cfg_t, job.quant.scheme, job.paths, job.dump_ir)
    imported, metrics = prepared.imported, dict(prepared.metrics)
    before, after = prepared.kernels["legalize"], prepared.kernels["fuse"]

    warnings: list[str] = []
    applied = None
    if job.tuning.apply:
        folder = database_folder(job.paths, str(cfg_m.name), cfg_t.name, job.tuning.database)
        applied, warnings = find_database(prepared, folder, explicit=bool(job.tuning.database))
    mod = applied.mod if applied else prepared.mod
    tuning = tuning_section(applied, after, Path(job.paths.root))
    if cfg_t.device == "cpu" and tuning["tasks_tuned"] < tuning["tasks_total"]:
        warnings.append(f"{tuning['tasks_total'] - tuning['tasks_tuned']} of "
                        f"{tuning['tasks_total']} kernels have no tuned schedule: expect ONNX "
                        "Runtime to be faster on CPU (tune with python -m compile.tune)")

    built = build_stage.build(mod, cfg_t, prepared.target, job.paths.cache_dir)
    metrics["compile_s"] = built.compile_s
    final_dir = Path(job.paths.artifacts_dir) / str(cfg_m.name) / cfg_t.name
    with StagedArtifact(final_dir) as stage:
        start = time.perf_counter()
        build_stage.export(built.executable, stage.library, cfg_t)
        metrics["export_s"] = time.perf_counter() - start
        pipeline = prepared.pipeline
        manifest_args = dict(
            model_name=str(cfg_m.name), onnx_path=imported.onnx_path,
            onnx_sha256=imported.onnx_sha256, opset=imported.opset, inputs=imported.inputs,
            outputs=imported.outputs, target_name=cfg_t.name, target=prepared.target_json,
            device=cfg_t.device, library=stage.library, library_arch=library_arch(cfg_t),
            device_code=built.device_code,
            pipeline={"name": pipeline.name, "fingerprint": pipeline.fingerprint,
                      "passes": pipeline.pass_names},
            quantization={"scheme": job.quant.scheme.name}, tuning=tuning)
        pending = {"status": "pending"}
        write_json_atomic(stage.manifest, build_manifest(**manifest_args, verification=pending))
        if job.verify.enabled and host_runnable(cfg_t):
            verification = _verify(job, stage.path, imported, prepared.sample, threads)
        else:
            reason = ("verify.enabled=false" if not job.verify.enabled else
                      f"this machine ({host_arch()}, no {cfg_t.device} runtime) cannot run a "
                      f"{library_arch(cfg_t)} {cfg_t.device} artifact")
            verification = {"status": "skipped", "reason": reason}
        write_json_atomic(stage.manifest, build_manifest(**manifest_args,
                                                         verification=verification))
        result = CompileResult(str(cfg_m.name), cfg_t.name, final_dir, prepared.target_json,
                               before, after, metrics, verification, tuning, threads,
                               tracker.run_id, warnings)
        _log_run(tracker, job, result, imported, stage.manifest)
        if verification["status"] == "failed":
            raise VerificationError(_failure_line(verification))
        stage.commit()
    return result


def _failure_line(verification: dict[str, Any]) -> str:
    answer = verification["answer"]
    parts = [f"max abs error {verification['max_abs_err']:.3g} "
             f"(max rel {verification['max_rel_err']:.3g}) in output "
             f"'{verification['worst_output']}', tolerance atol={verification['atol']} "
             f"rtol={verification['rtol']}"]
    if not answer["agree"]:
        parts.append(f"task answer {answer['ours']} vs ONNX Runtime's {answer['reference']}")
    return ("verification against ONNX Runtime failed: " + "; ".join(parts) +
            "; the artifact was not written")


def _log_run(tracker: Tracker, job: CompileJob, result: CompileResult, imported,
             manifest_path: Path) -> None:
    if not tracker.enabled:
        return
    tracker.set_tags({"job": "compile", "model": result.model, "target": result.target,
                      "verification": result.verification["status"]})
    tracker.set_tags({"tuning_database": result.tuning["database_sha256"][:16]})
    tracker.log_params({"model": {"name": result.model, "onnx_sha256": imported.onnx_sha256,
                                  "opset": imported.opset, "task": job.model.task.name,
                                  "inputs": [s.to_json() for s in imported.inputs]},
                        "target": {"name": result.target, "dict": result.target_dict},
                        "quant": job.quant.scheme.name, "threads": result.threads,
                        "tuning": {k: v for k, v in result.tuning.items() if k != "untuned_tasks"}})
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
    metrics.update(tasks_total=result.tuning["tasks_total"], tasks_tuned=result.tuning["tasks_tuned"])
    tracker.log_metrics(metrics)
    tracker.log_artifact(manifest_path)
    tracker.log_dict({"op_counts": imported.op_counts}, "onnx_ops.json")
