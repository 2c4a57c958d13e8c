"""The benchmark job: the compiled artifact against ONNX Runtime, OpenVINO and the untuned build.

Everything runs in one process on the same real input, at the same thread count, after
warm-up, engines interleaved per thread count. Absolute times on a shared machine are noisy;
the ratios from one run are the result (the product's performance method, DESIGN.md).
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import runner
from runner import LatencyStats
from runner.manifest import read_manifest

from .baselines import (
    onnxruntime_runner,
    openvino_default_precision,
    openvino_runner,
    openvino_version,
)
from .config import Baseline, BenchJob, QuantScheme, host_threads
from .errors import ConfigError
from .job import run_compile
from .pipeline import code_sha256, post_tuning_pass_names
from .prepare import (
    PreparedModel,
    adopt_database_cpu,
    database_folder,
    find_database,
    prepare_model,
    resolve_layout,
    variant_path,
)
from .targets import host_runnable
from .tracking import Tracker

log = logging.getLogger(__name__)

OURS = "tvm"


@dataclass
class BenchRow:
    """One engine at one thread count."""

    engine: str
    threads: int
    stats: LatencyStats
    batch: int

    @property
    def throughput(self) -> float:
        """Samples per second at the p50 latency."""
        return self.batch * 1e3 / self.stats.p50_ms

    def as_dict(self) -> dict[str, Any]:
        """JSON data of the row."""
        return {"engine": self.engine, "threads": self.threads, **self.stats.as_dict(),
                "throughput_per_s": self.throughput}


@dataclass
class BenchResult:
    """All rows of a benchmark run, and the ratios of ours to the peers (p50 over p50)."""

    model: str
    target: str
    rows: list[BenchRow]
    artifact_dir: Path
    tuning: dict[str, Any]
    versions: dict[str, str | None] = field(default_factory=dict)
    run_id: str | None = None
    ours: str = OURS  # engine name of the artifact under test: tvm, tvm-int8, tvm-int8-a16

    def best(self, engine: str) -> BenchRow | None:
        """The engine's fastest row over thread counts (by p50)."""
        rows = [r for r in self.rows if r.engine == engine]
        return min(rows, key=lambda r: r.stats.p50_ms) if rows else None

    @property
    def ratios(self) -> dict[str, float]:
        """ours_p50 / peer_p50 for each peer, best thread count of each (below 1: ours faster)."""
        ours = self.best(self.ours)
        if ours is None:
            return {}
        out = {}
        for engine in sorted({r.engine for r in self.rows} - {self.ours}):
            out[engine] = ours.stats.p50_ms / self.best(engine).stats.p50_ms
        peers = [e for e in out if e != "untuned" and not e.startswith(OURS)]
        if peers:
            out["best_peer"] = max(out[e] for e in peers)
        return out


def _current_artifact(job: BenchJob, prepared: PreparedModel, sha: str) -> Path | None:
    """The artifact folder if it was built from this model, target and database by this code."""
    folder = variant_path(job.paths.artifacts_dir, str(job.model.name), job.target,
                          job.quant.scheme)
    try:
        manifest = read_manifest(folder)
    except runner.ArtifactError:
        return None
    quantized = prepared.quantized.settings if prepared.quantized else None
    fresh = (manifest["model"]["onnx_sha256"] == prepared.imported.onnx_sha256
             and manifest["target"] == prepared.target_json
             and manifest["tuning"]["database_sha256"] == sha
             and manifest["pipeline"]["fingerprint"] == prepared.pipeline.fingerprint
             and manifest["pipeline"].get("code_sha256") == code_sha256()
             and manifest["pipeline"].get("max_unroll_steps") == job.target.max_unroll_steps
             and manifest["pipeline"].get("post_tuning_passes")
             == post_tuning_pass_names(job.target)
             and manifest["quantization"].get("settings") == quantized
             and manifest["verification"]["status"] == "passed")
    return folder if fresh else None


def ensure_artifact(job: BenchJob) -> tuple[Path, PreparedModel]:
    """The job's artifact, compiled first unless a matching one exists (``bench.recompile``).

    Like the compile job, for the CPU its tuning database was tuned on where this machine runs
    that CPU's code (:func:`compile.prepare.adopt_database_cpu`).
    """
    job, _ = resolve_layout(job)  # run_bench has (its fp32 and untuned builds alike)
    job, adopted = adopt_database_cpu(job)
    if adopted:
        log.warning(adopted)
    prepared = prepare_model(job.model, job.target, job.quant, job.paths)
    folder = database_folder(job.paths, str(job.model.name), job.target, job.quant.scheme,
                             job.tuning.database)
    applied, _ = find_database(prepared, folder, explicit=bool(job.tuning.database))
    artifact = None if job.bench.recompile else _current_artifact(
        job, prepared, applied.sha256 if applied else "untuned")
    if artifact is None:
        log.info("compiling %s for %s (%s) first", job.model.name, job.target.name,
                 job.quant.scheme.name)
        artifact = run_compile(job).artifact_dir
    return artifact, prepared


def _interleaved(engines: list[tuple[str, Callable]], threads: int, cfg,
                 batch: int) -> list[BenchRow]:
    """Time every engine at one thread count, in rounds where the engines take turns.

    Each engine gets ``cfg.warmup`` untimed calls first and one more before each of its rounds;
    its timed runs (``cfg.runs``, fewer if they would exceed ``cfg.max_s``) are split into
    ``cfg.rounds`` rounds, the order of the engines reversed every other round.

    Parameters
    ----------
    engines : list of (str, callable)
        Engine name and a function running the model once on the benchmark input.
    """
    runs = []
    for _, fn in engines:
        once = runner.time_callable(fn, runs=1, warmup=1)
        runs.append(max(3, min(cfg.runs, int(cfg.max_s * 1e3 / max(once.p50_ms, 1e-3)))))
        for _ in range(cfg.warmup):
            fn()
    samples: list[list[float]] = [[] for _ in engines]
    for round_index in range(cfg.rounds):
        order = list(range(len(engines)))
        for i in order if round_index % 2 == 0 else order[::-1]:
            share = runs[i] // cfg.rounds + (round_index < runs[i] % cfg.rounds)
            if share:
                engines[i][1]()
                samples[i].extend(runner.time_samples(engines[i][1], share))
    rows = []
    for (name, _), timed in zip(engines, samples, strict=True):
        stats = LatencyStats.from_samples(timed, cfg.warmup)
        log.info("%-16s threads=%d p50 %.3f ms (%d runs)", name, threads, stats.p50_ms,
                 stats.runs)
        rows.append(BenchRow(name, threads, stats, batch))
    return rows


def run_bench(job: BenchJob, tracker: Tracker | None = None) -> BenchResult:
    """Benchmark a model's compiled artifact against its peers.

    The artifact in ``artifacts/<model>/<target>[/<scheme>]`` is used if it was built from the
    same model bytes, pipeline, quantization and tuning database and passed verification;
    otherwise it is compiled first (the compile job, with verification). With ``quant=int8`` the
    rows also hold the float32 artifact, ONNX Runtime/OpenVINO running the same QDQ model
    with their own int8 kernels (with ``quant.activation_type=int16``, our row is
    ``tvm-int8-a16`` and theirs run the 8-bit model it was widened from), and OpenVINO at its
    default precision where that is reduced (``openvino-bf16`` on CPUs with AVX-512 BF16).

    Returns
    -------
    BenchResult

    Raises
    ------
    ConfigError
        A target this machine cannot run.
    """
    tracker = tracker or Tracker(None)
    job, _ = resolve_layout(job)  # once: the fp32 and untuned builds take the same layout
    cfg = job.bench
    if not host_runnable(job.target):
        raise ConfigError(f"benchmarking target {job.target.name} needs a machine that runs it; "
                          "this one cannot")
    artifact, prepared = ensure_artifact(job)
    manifest = read_manifest(artifact)
    int8 = job.quant.scheme == QuantScheme.int8
    wide = int8 and job.quant.activation_type == "int16"
    fp32_artifact = None
    if int8:
        fp32_job = replace(job, quant=replace(job.quant, scheme=QuantScheme.none))
        fp32_artifact, _ = ensure_artifact(fp32_job)
    inputs = prepared.sample.inputs
    onnx_path = prepared.imported.onnx_path
    # ONNX Runtime's and OpenVINO's int8 kernels run the 8-bit QDQ model (with 16-bit
    # activations, the one they were widened from)
    qdq_path = prepared.quantized.int8_path if int8 else None
    batch = prepared.imported.inputs[0].shape[0] if prepared.imported.inputs[0].shape else 1
    thread_counts = list(cfg.threads) or sorted({1, host_threads()})
    ours = OURS if not int8 else f"{OURS}-int8" + ("-a16" if wide else "")
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        untuned_dir = None
        if Baseline.untuned in cfg.baselines and manifest["tuning"]["database_sha256"] != "untuned":
            untuned_job = replace(job, tuning=replace(job.tuning, apply=False),
                                  paths=replace(job.paths, artifacts_dir=tmp),
                                  verify=replace(job.verify, enabled=False))
            untuned_dir = run_compile(untuned_job).artifact_dir
        peers: list[tuple[str, Path, Callable]] = []
        if Baseline.onnxruntime in cfg.baselines:
            peers.append(("onnxruntime", onnx_path, onnxruntime_runner))
            if int8:
                peers.append(("onnxruntime-int8", qdq_path, onnxruntime_runner))
        if Baseline.openvino in cfg.baselines:
            if openvino_version() is None:
                log.warning("openvino is not installed: no OpenVINO rows "
                            "(pip install -e '.[baselines]')")
            else:
                peers.append(("openvino", onnx_path, openvino_runner))
                if int8:
                    peers.append(("openvino-int8", qdq_path, openvino_runner))
                    reduced = openvino_default_precision()
                    if reduced and reduced != "f32":  # OpenVINO's own default here
                        peers.append((f"openvino-{reduced}", onnx_path, functools.partial(
                            openvino_runner, precision=reduced)))
        for threads in thread_counts:
            ours_model = runner.load(artifact, num_threads=threads)
            engines: list[tuple[str, Callable]] = [
                (ours, functools.partial(ours_model.run, inputs))]
            if fp32_artifact is not None:
                fp32_model = runner.load(fp32_artifact, num_threads=threads)
                engines.append((OURS, functools.partial(fp32_model.run, inputs)))
            engines += [(name, make(path, threads, inputs)) for name, path, make in peers]
            if untuned_dir is not None:
                slow = runner.load(untuned_dir, num_threads=threads)
                engines.append(("untuned", functools.partial(slow.run, inputs)))
            rows += _interleaved(engines, threads, cfg, batch)
    versions = {"tvm": manifest["versions"]["tvm"],
                "onnxruntime": manifest["versions"]["onnxruntime"],
                "openvino": openvino_version()}
    result = BenchResult(str(job.model.name), job.target.name, rows, artifact,
                         manifest["tuning"], versions, tracker.run_id, ours)
    _log(tracker, result)
    return result


def _log(tracker: Tracker, result: BenchResult) -> None:
    if not tracker.enabled:
        return
    tracker.set_tags({"job": "bench", "model": result.model, "target": result.target,
                      "tuning_database": result.tuning["database_sha256"][:16]})
    tracker.log_params({"threads": sorted({r.threads for r in result.rows}),
                        "engines": sorted({r.engine for r in result.rows}),
                        "versions": result.versions, "tasks_tuned": result.tuning["tasks_tuned"],
                        "tasks_total": result.tuning["tasks_total"],
                        "artifact": str(result.artifact_dir)})
    metrics: dict[str, float] = {}
    for row in result.rows:
        for q in ("p50", "p90", "p99"):
            metrics[f"latency_ms_{q}/{row.engine}/t{row.threads}"] = getattr(row.stats, f"{q}_ms")
        metrics[f"throughput_per_s/{row.engine}/t{row.threads}"] = row.throughput
    metrics.update({f"ratio_vs_{k}": v for k, v in result.ratios.items()})
    tracker.log_metrics(metrics)
    tracker.log_dict([r.as_dict() for r in result.rows], "bench.json")


def table(result: BenchResult) -> str:
    """The benchmark as a fixed-width table, one row per engine and thread count."""
    ours = {r.threads: r for r in result.rows if r.engine == result.ours}
    width = max([len("engine"), *(len(r.engine) for r in result.rows)])
    lines = [f"{'engine':{width}} {'threads':>7} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} "
             f"{'per s':>8} {'ours/this':>9}"]
    for row in sorted(result.rows, key=lambda r: (r.threads, r.engine != result.ours, r.engine)):
        ratio = ours[row.threads].stats.p50_ms / row.stats.p50_ms if row.threads in ours else None
        shown = f"{ratio:9.2f}" if ratio else f"{'-':>9}"
        lines.append(f"{row.engine:{width}} {row.threads:7d} {row.stats.p50_ms:9.3f} "
                     f"{row.stats.p90_ms:9.3f} {row.stats.p99_ms:9.3f} {row.throughput:8.1f} "
                     f"{shown}")
    return "\n".join(lines)

