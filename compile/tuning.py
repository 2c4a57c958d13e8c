"""The tuning job: MetaSchedule over a model's fused kernels, resumable and tracked in MLflow.

Tasks are the PrimFuncs of the *same* preparation pipeline the compile job uses. Records are
appended to ``tune_logs/<model>/<target>/`` as they are measured (a killed job keeps them), a
second run warm-starts from them and adds its budget, skipping tasks that converged (no gain in
``tuning.patience`` trials) or are negligible (under ``tuning.min_weight`` of the model's FLOPs
and of its estimated time). With ``target.mcpu: host`` on a CPU that has no database of its own
next to one tuned on another CPU it runs, the job tunes ``tune_logs/<model>/<target>-<cpu>/``,
its kernels started from the other CPU's records timed here (:mod:`compile.warm_start`).
After the search, depthwise convolutions get register-tiled variants of their best records,
kept where faster (:mod:`compile.depthwise_tiles`).
At the end the database is pruned to the best ``tuning.keep_per_workload`` records per workload
(the committed form); the full database of the run is an MLflow artifact.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import logging
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import _tvm
from .config import CompileJob, Layout, QuantScheme, TargetKind, TuningConfig, host_threads
from .depthwise_tiles import try_register_tiles
from .errors import ConfigError, TuningDatabaseError
from .ms_worker import build_candidate
from .pipeline import unroll_cap
from .prepare import (
    PreparedModel,
    database_folder,
    host_cpu_folder,
    prepare_model,
    resolve_layout,
)
from .record_check import check_best_records
from .row_parallel import ROW_AXIS, RowParallel
from .tracking import Tracker, host_cpu_name
from .tuning_db import (
    PROVENANCE_SCHEMA,
    RECORD_FILE,
    WORKLOAD_FILE,
    count_records,
    fastest_by_workload,
    import_shared_records,
    mismatch,
    open_database,
    pack,
    prune,
    read_provenance,
    repair,
    tuned_on_other_cpu,
    workload_key,
    write_provenance,
)
from .warm_start import retime_records

log = logging.getLogger(__name__)
ms = _tvm.ms

#: A task's best time must improve by more than this fraction to count as an improvement.
IMPROVEMENT = 0.01


@dataclass
class TaskStats:
    """One tuning task (a fused PrimFunc) and what tuning found for it.

    Attributes
    ----------
    name : str
        The PrimFunc's name, e.g. ``fused_conv2d_add_relu``.
    flops : float
        Floating-point operations of one call (``estimate_tir_flops``).
    weight : int
        Calls per model run.
    trials : int
        Candidates measured over all runs.
    trials_run : int
        Candidates measured by this run.
    best_us : float or None
        Fastest measured time of one call, microseconds.
    since_improvement : int
        Trials since the best improved by more than 1 %.
    skipped : str or None
        Why this run did not tune the task (converged, negligible).
    build_errors, run_errors : int
        Candidates that failed to build or to run in this run.
    workload : str
        Structural hash of the PrimFunc (hex): the key that survives Relax renaming the fused
        kernels when the module changes (another ``quant.exclude``, say).
    """

    name: str
    flops: float
    weight: int
    workload: str = ""
    trials: int = 0
    trials_run: int = 0
    best_us: float | None = None
    since_improvement: int = 0
    skipped: str | None = None
    build_errors: int = 0
    run_errors: int = 0

    @property
    def gflops_per_s(self) -> float | None:
        """Achieved GFLOP/s of the best schedule."""
        if not self.best_us or not self.flops:
            return None
        return self.flops / (self.best_us * 1e-6) / 1e9

    @property
    def share_us(self) -> float | None:
        """The task's part of one model run: weight x best time, microseconds."""
        return self.weight * self.best_us if self.best_us else None


@dataclass
class TuneResult:
    """What a tuning job did (also logged to MLflow)."""

    model: str
    target: str
    database: Path
    tasks: list[TaskStats]
    trials_run: int
    trials_total: int
    wall_s: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    records_kept: int = 0
    records_rejected: int = 0  # best records whose kernel computed wrong values
    run_id: str | None = None
    warnings: list[str] = field(default_factory=list)
    reused: dict[str, int] = field(default_factory=dict)  # task -> records from other models

    @property
    def trials_per_min(self) -> float:
        """Measured candidates per minute of wall time."""
        return self.trials_run / (self.wall_s / 60) if self.wall_s > 0 else 0.0

    @property
    def est_latency_ms(self) -> float | None:
        """Sum of weight x best time over the tasks, when every task has a measurement."""
        shares = [t.share_us for t in self.tasks]
        return sum(shares) / 1e3 if shares and all(s is not None for s in shares) else None


def check_tunable(job: CompileJob) -> None:
    """Refuse targets whose candidates cannot be measured on this machine.

    Raises
    ------
    ConfigError
        Cross targets (no RPC runner here) and CUDA without a GPU.
    """
    target = job.target
    if target.kind == TargetKind.llvm and target.mtriple:
        raise ConfigError(f"tuning target {target.name} needs its candidates measured on a "
                          f"{target.mtriple} machine; run python -m compile.tune there "
                          "(RPC runners are not supported)")
    if target.kind == TargetKind.cuda:
        import tvm

        if not tvm.cuda(0).exist:
            raise ConfigError(f"tuning target {target.name} needs an NVIDIA GPU on this machine")


def hide_torch_from_workers(cache_dir: str | Path) -> None:
    """Keep PyTorch out of MetaSchedule's worker processes (this process's children).

    apache-tvm-ffi imports torch eagerly when it is installed, for tensor interop the workers
    never use; it cost 2.5 s of each worker's start here, and the builder starts new workers for
    every batch. A ``torch`` package that raises ImportError, first on the children's
    ``PYTHONPATH``, makes that import fail fast (tvm_ffi catches ImportError).
    """
    shim = Path(cache_dir) / "worker-site"
    package = shim / "torch" / "__init__.py"
    if not package.is_file():
        package.parent.mkdir(parents=True, exist_ok=True)
        package.write_text('raise ImportError("torch is hidden from TVM worker processes")\n')
    paths = [str(shim), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def _workload(mod: Any) -> str:
    return workload_key(_tvm.structural_hash(mod))


def _task_stats(tasks: list[Any], provenance: dict[str, Any]) -> list[TaskStats]:
    """Each task's history from the provenance: by workload hash, else by name (older files)."""
    known = provenance.get("tasks", {})
    by_workload = {e["workload"]: e for e in known.values() if e.get("workload")}
    stats = []
    for task in tasks:
        mod = task.dispatched[0]
        workload = _workload(mod)
        before = by_workload.get(workload) or known.get(task.task_name, {})
        if before.get("workload", workload) != workload:
            before = {}  # the same name for another kernel
        stats.append(TaskStats(task.task_name, float(_tvm.estimate_tir_flops(mod)),
                               int(task.weight), workload, trials=int(before.get("trials", 0)),
                               best_us=before.get("best_us"),
                               since_improvement=int(before.get("since_improvement", 0))))
    return stats


def _best_us(database: Any, tasks: list[Any], name: str) -> float | None:
    """Fastest record of a task in the database, microseconds."""
    task = next(t for t in tasks if t.task_name == name)
    records = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
    if not records or not records[0].run_secs:
        return None
    secs = [float(s) for s in records[0].run_secs]
    return sum(secs) / len(secs) * 1e6


def task_intrinsic(task_name: str, target) -> str | None:
    """The x86 dot intrinsic a task's kernel is packed for (None: not a packed kernel).

    Parameters
    ----------
    task_name : str
        The task's name: its fused PrimFunc's, which keeps the packing passes' names
        (``compile.passes.pointwise_int8.DOT_PREFIX``;
        ``compile.passes.pack_pointwise_nhwc.channel_dot_name``, read back by
        ``channel_dot_kind``).
    target : tvm.target.Target

    Returns
    -------
    str or None
        The intrinsic of that width for the target (:func:`compile.intrinsics.dot_intrinsic`,
        :func:`compile.intrinsics.channel_intrinsics`), or None where the target has none.
    """
    from .intrinsics import (
        INTRINSIC_LANES,
        INTRINSIC_REDUCE,
        REDUCE,
        channel_intrinsics,
        dot_intrinsic,
    )
    from .passes.pack_pointwise_nhwc import channel_dot_kind
    from .passes.pointwise_int8 import DOT_PREFIX

    kind = channel_dot_kind(task_name)
    if kind is not None:
        return next((i for bits in (8, 16) for i in channel_intrinsics(target, bits)
                     if (INTRINSIC_LANES[i], INTRINSIC_REDUCE.get(i, REDUCE)) == kind), None)
    return dot_intrinsic(target) if DOT_PREFIX in task_name else None


def search_space(intrinsic: str | None, rows: RowParallel | None = None,
                 defaults: list | None = None):
    """Return MetaSchedule's design space for the tasks packed for one dot intrinsic.

    TVM's default for the target where ``intrinsic`` is None; otherwise that plus
    tensorization with ``intrinsic`` (:func:`task_intrinsic`; the packed 1×1 convolutions
    of ``compile.passes.pointwise_int8`` and ``compile.passes.PackPointwiseNHWC``). One
    intrinsic per space: MetaSchedule's auto-tensorization would also map a 16-lane
    intrinsic onto an 8-lane packed kernel, repacking its weights inside the kernel.

    TVM 0.27's int8 tensorization rules (AVX-512 VNNI/BW targets only) do not match the packed
    layout; this is its ``DefaultX86`` rule list
    (``src/s_tir/meta_schedule/schedule_rule/schedule_rule.cc``) with this project's
    intrinsic: auto-tensorizing multi-level tiling ahead of the plain one, and the tensorize
    post-processor.

    With ``rows`` (``tuning.parallel_rows``), that post-processor is added last: only
    candidates whose threads split the output rows are measured.

    Parameters
    ----------
    intrinsic : str or None
        A registered tensor intrinsic (:mod:`compile.intrinsics`).
    rows : RowParallel, optional
        The post-processor to add (``tuning.parallel_rows``); None adds none.
    defaults : list of Postproc, optional
        The target's default post-processors (of TVM's default space), which ``rows`` extends
        where ``intrinsic`` is None.

    Returns
    -------
    str or SpaceGenerator
        ``"post-order-apply"`` (TVM's default) or a ``PostOrderApply``.
    """
    if intrinsic is None:
        if rows is None:
            return "post-order-apply"
        return ms.space_generator.PostOrderApply(
            sch_rules="from-target", mutator_probs="from-target",
            postprocs=[*(defaults or []), rows])
    from . import intrinsics  # noqa: F401 (importing registers the intrinsics)

    rules = list(ms.ScheduleRule.create("llvm"))
    tiling = next(i for i, r in enumerate(rules) if type(r).__name__ == "MultiLevelTiling")
    rules.insert(tiling, ms.schedule_rule.MultiLevelTilingWithIntrin(
        intrinsic, structure="SSRSRS", max_innermost_factor=64,
        reuse_write=ms.schedule_rule.ReuseType(req="may", levels=[1, 2], scope="global")))
    postprocs = list(ms.Postproc.create("llvm"))  # DefaultCPUTensorization: tensorize before
    layout = next(i for i, p in enumerate(postprocs) if type(p).__name__ == "RewriteLayout")
    postprocs.insert(layout, ms.postproc.RewriteTensorize(vectorize_init_loop=True))
    if rows is not None:
        postprocs.append(rows)
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs="llvm")


def _tune_contexts(tasks: list, target, work_dir: str, threads: int, cfg: TuningConfig,
                   rows: RowParallel | None = None):
    """One TuneContext per task (in order), each with its intrinsic's search space.

    ``rows``: only schedules whose threads split the output rows (:func:`search_space`).

    Returns
    -------
    contexts : list of TuneContext
    weights : list of float
    """
    groups: dict[str | None, list[int]] = {}
    for index, task in enumerate(tasks):
        groups.setdefault(task_intrinsic(task.task_name, target), []).append(index)
    defaults = None
    if rows is not None and tasks:
        defaults = list(ms.TuneContext(  # TVM's default space for this target, on one task
            mod=tasks[0].dispatched[0], target=target, space_generator="post-order-apply",
            task_name="probe").space_generator.postprocs)
    contexts: list = [None] * len(tasks)
    weights: list = [None] * len(tasks)
    for intrinsic, members in groups.items():
        made, made_weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            [tasks[i] for i in members], work_dir=work_dir, num_threads=threads,
            space=search_space(intrinsic, rows, defaults), seed=cfg.seed,
            strategy=ms.search_strategy.EvolutionarySearch(population_size=cfg.population))
        if len(made) != len(members):
            raise RuntimeError("MetaSchedule left out a task that is already scheduled")
        for i, context, weight in zip(members, made, made_weights, strict=True):
            contexts[i], weights[i] = context, weight
    return contexts, weights


def _select(stats: list[TaskStats], cfg: TuningConfig) -> list[int]:
    """Indices of the tasks this run tunes; the others get ``skipped`` set.

    A task is negligible when both its share of the model's FLOPs and its share of the
    estimated run time are under ``tuning.min_weight``: data-movement kernels (layout packing,
    transposes) have no FLOPs but can take time, or carry a measurement spoiled by noise that
    only more trials replace. A task without a time (never measured, every candidate failed, or
    every record rejected by the record check) is tuned: its time share is unknown, not zero.
    With ``tuning.only_new`` only such tasks are tuned.
    """
    total_flops = sum(s.flops * s.weight for s in stats) or 1.0
    total_us = sum((s.best_us or 0.0) * s.weight for s in stats) or 1.0
    chosen = []
    for index, task in enumerate(stats):
        share = task.flops * task.weight / total_flops
        time_share = (task.best_us or 0.0) * task.weight / total_us
        if cfg.only_new and task.trials > 0 and task.best_us:
            task.skipped = "measured already (tuning.only_new)"
        elif task.trials >= cfg.patience and task.since_improvement >= cfg.patience:
            task.skipped = f"converged: no gain in the last {task.since_improvement} trials"
        elif task.trials > 0 and task.best_us and max(share, time_share) < cfg.min_weight:
            task.skipped = (f"negligible: {share:.2%} of the model's FLOPs, {time_share:.2%} "
                            "of its estimated time")
        else:
            chosen.append(index)
    return chosen


def _reset_metaschedule_logging() -> None:
    """Detach MetaSchedule's handlers from an earlier job in this process and quiet its console.

    MetaSchedule configures its loggers anew for every job (a file per task under the job's
    work dir) and fails on handlers it finds from an earlier configuration. Its console handler
    takes the logger's level: WARNING keeps the per-round tables in the log files only.
    """
    logger = logging.getLogger("tvm.s_tir.meta_schedule")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.WARNING)


class _Progress:
    """State of a running tuning job, updated after every measured batch."""

    def __init__(self, stats: list[TaskStats], chosen: list[int], cfg: TuningConfig,
                 tracker: Tracker, save, trials_before: int):
        from tqdm import tqdm

        self.stats, self.chosen, self.cfg = stats, chosen, cfg
        self.tracker, self.save = tracker, save
        self.trials_before = trials_before
        self.trials = 0
        self.start = time.monotonic()
        self.curve: list[tuple[int, float]] = []
        self.stopped_by_time = False
        self.bar = tqdm(total=cfg.trials, unit="trial", desc="tuning", dynamic_ncols=True)

    def on_batch(self, scheduler: Any, task_id: int, runner_results: list[Any],
                 builder_results: list[Any]) -> None:
        task = self.stats[self.chosen[task_id]]
        for built, ran in zip(builder_results, runner_results, strict=True):
            task.trials += 1
            task.trials_run += 1
            self.trials += 1
            if built.error_msg:
                task.build_errors += 1
                task.since_improvement += 1
                continue
            if ran.error_msg or not ran.run_secs:
                task.run_errors += 1
                task.since_improvement += 1
                continue
            secs = [float(s) for s in ran.run_secs]
            us = sum(secs) / len(secs) * 1e6
            if task.best_us is None or us < task.best_us * (1 - IMPROVEMENT):
                task.since_improvement = 0
            else:
                task.since_improvement += 1
            task.best_us = us if task.best_us is None else min(task.best_us, us)
        self.bar.update(len(runner_results))
        elapsed = time.monotonic() - self.start
        measured = sum(1 for s in self.stats if s.best_us)
        shares = [s.share_us for s in self.stats if s.share_us]
        est_ms = sum(shares) / 1e3 if measured == len(self.stats) else None
        postfix = {"tasks": f"{measured}/{len(self.stats)}"}
        if est_ms is not None:
            postfix["est_ms"] = f"{est_ms:.2f}"
            self.curve.append((self.trials_before + self.trials, est_ms))
        self.bar.set_postfix(postfix)
        step = self.trials_before + self.trials
        self.tracker.log_metrics({"est_latency_ms": est_ms, "tasks_measured": measured,
                                  "trials_per_min": self.trials / (elapsed / 60)}, step=step)
        self.save()
        over_time = self.cfg.max_time_min and elapsed > self.cfg.max_time_min * 60
        if over_time and not self.stopped_by_time:
            # The batch's records are in the database already (the default callbacks run
            # first). Terminating tasks from here is not safe: the scheduler calls back while
            # joining the task it has just picked, and then asserts that task is alive.
            self.stopped_by_time = True
            log.info("tuning.max_time_min=%s reached: stopping", self.cfg.max_time_min)
            # Candidates of other tasks may be built and measuring (the first round sends every
            # task before joining any): join them so their records reach the database too.
            for other in range(len(self.chosen)):
                if other != task_id:
                    try:
                        scheduler.join_running_task(other)
                    except Exception:  # noqa: BLE001 - nothing in flight for that task
                        pass
            raise _TimeUp(f"tuning.max_time_min={self.cfg.max_time_min} reached")

    def close(self) -> None:
        """Close the progress bar."""
        self.bar.close()


class _TimeUp(Exception):
    """Raised from the measure callback to stop MetaSchedule at ``tuning.max_time_min``."""


def _make_callback(progress: _Progress) -> Any:
    @_tvm.derived_object
    class ProgressCallback(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            progress.on_batch(task_scheduler, task_id, runner_results, builder_results)

    return ProgressCallback()


def _provenance(prepared: PreparedModel, model: str, old: dict[str, Any] | None,
                stats: list[TaskStats], run: dict[str, Any], cfg: TuningConfig) -> dict[str, Any]:
    host = {"cpu": host_cpu_name(), "llvm_cpu": str(_tvm.llvm_get_system_cpu()),
            "cores": host_threads(), "machine": platform.machine()}
    runs = list((old or {}).get("runs", []))
    runs = [r for r in runs if r.get("started_at") != run["started_at"]] + [{**run, "host": host}]
    tasks = {s.name: {"flops": s.flops, "weight": s.weight, "trials": s.trials,
                      "best_us": s.best_us, "since_improvement": s.since_improvement,
                      "workload": s.workload} for s in stats}
    # Kernels of other variants of the model (another quant.exclude, 8- and 16-bit activations
    # in one folder) keep their history, unless tuning.drop_stale drops them. Variants can give
    # different kernels the same name: those entries are kept as "<name>@<workload>" (the
    # history is read back by workload, _task_stats).
    current = {s.workload for s in stats}
    for name, entry in ({} if cfg.drop_stale else (old or {}).get("tasks", {})).items():
        if entry.get("workload") and entry["workload"] not in current:
            tasks.setdefault(name if name not in tasks else f"{name}@{entry['workload']}", entry)
    return {
        "schema": PROVENANCE_SCHEMA,
        "model": model,
        **prepared.database_key.as_dict(),
        "pipeline": prepared.pipeline.name,
        # The machine of the first run; each run names its own (a run on another CPU that
        # runs the target's code adds records timed there).
        "host": (old or {}).get("host", host),
        "seed": cfg.seed,
        **({} if cfg.parallel_rows is None else {"parallel_rows": cfg.parallel_rows}),
        "trials_total": sum(e["trials"] for e in tasks.values()),
        "wall_s_total": round(sum(r.get("wall_s", 0.0) for r in runs), 1),
        "tasks": tasks,
        "runs": runs,
        # Carry-overs to new pipeline fingerprints (written when a pass change keeps the
        # kernels): history, kept by every later run.
        **({"pipeline_migrations": old["pipeline_migrations"]}
           if (old or {}).get("pipeline_migrations") else {}),
    }


def task_table(stats: list[TaskStats]) -> list[dict[str, Any]]:
    """The per-task table (heaviest first), as rows of JSON data."""
    total = sum(s.share_us or 0.0 for s in stats) or 1.0
    rows = []
    for s in sorted(stats, key=lambda s: -(s.share_us or 0.0)):
        rows.append({"task": s.name, "flops": int(s.flops), "weight": s.weight,
                     "trials": s.trials, "trials_this_run": s.trials_run,
                     "best_us": round(s.best_us, 2) if s.best_us else None,
                     "share": round((s.share_us or 0.0) / total, 4),
                     "gflops_per_s": round(s.gflops_per_s, 2) if s.gflops_per_s else None,
                     "build_errors": s.build_errors, "run_errors": s.run_errors,
                     "skipped": s.skipped or ""})
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["task"])
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _plot(curve: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], marker=".", linewidth=1)
    ax.set_xlabel("trials (all runs)")
    ax.set_ylabel("estimated latency, ms")
    ax.text(0.99, 0.97, "sum over tasks of weight x best kernel time", ha="right", va="top",
            transform=ax.transAxes, fontsize=8, color="gray")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_tune(job: CompileJob, tracker: Tracker | None = None) -> TuneResult:
    """Tune a model's kernels for a target and add the records to its database.

    Parameters
    ----------
    job : CompileJob
        Model, target, quantization and ``tuning`` settings (budget, cost model, workers, ...).
    tracker : Tracker, optional

    Returns
    -------
    TuneResult

    Raises
    ------
    ConfigError
        The target cannot be tuned on this machine.
    TuningDatabaseError
        The database on disk was tuned for another model, pipeline, target or TVM version, or
        is unreadable.
    """
    tracker = tracker or Tracker(None)
    job, _ = resolve_layout(job)
    cfg = job.tuning
    check_tunable(job)
    threads = job.target.num_cores or host_threads()
    # Candidates are timed in worker processes: size their TVM thread pool like the target.
    os.environ["TVM_NUM_THREADS"] = str(threads)
    hide_torch_from_workers(job.paths.cache_dir)
    prepared = prepare_model(job.model, job.target, job.quant, job.paths, job.dump_ir)
    model, target_name = str(job.model.name), job.target.name
    folder = database_folder(job.paths, model, job.target, job.quant.scheme, cfg.database)
    old = read_provenance(folder)
    own = None if cfg.database else host_cpu_folder(job.paths, model, job.target,
                                                    job.quant.scheme)
    if old is not None:
        problem = mismatch(old, prepared.database_key)
        if problem and own is not None and tuned_on_other_cpu(old, prepared.database_key):
            # The compile job here adopts a database tuned on another CPU: tune this CPU's own.
            log.info("no tuning database for this CPU yet: tuning %s", own)
            folder, old = own, None
        elif problem:
            hint = (f" (tuning.database={own} tunes for this CPU; compile and bench jobs here "
                    "then take it)" if own is not None else "")
            raise TuningDatabaseError(f"{folder} holds a database for something else: {problem}; "
                                      f"point tuning.database at another folder{hint} or "
                                      "delete it")
    if job.target.kind == TargetKind.llvm:
        cfg = replace(cfg, parallel_rows=parallel_rows(
            cfg, old, folder, new=job.quant.scheme != QuantScheme.int8
            and job.target.layout == Layout.NHWC))
    rows = (RowParallel(ROW_AXIS[job.target.layout.name]) if cfg.parallel_rows and threads > 1
            else None)
    warnings = repair(folder) if folder.is_dir() else []
    database = open_database(folder)
    tasks = ms.relax_integration.extract_tasks(prepared.mod, prepared.target)
    if not tasks:
        raise ConfigError(f"{model} has no kernels to tune for {target_name}")
    family = "cuda" if job.target.kind == TargetKind.cuda else "x86_64"
    scratch = Path(job.paths.cache_dir) / "tuning" / model / target_name
    warm_from = (_other_cpu_database(job, prepared) if cfg.warm_start and folder == own
                 else None)
    warmed: dict[str, int] = {}
    if warm_from is not None:
        _tvm.register_tensor_intrinsics(family)
        with _candidate_tmpdir(scratch / "tmp"):
            warmed = retime_records(database, tasks, warm_from, prepared.target,
                                    *_measurers(job, threads),
                                    keep=rows.accepts if rows else None)
    reused = (import_shared_records(database, tasks, folder, Path(job.paths.tune_logs_dir),
                                    prepared.target_json, parallel_rows=cfg.parallel_rows)
              if cfg.reuse else {})
    stats = _task_stats(tasks, old or {})
    for task in stats:
        if (task.name in reused or task.name in warmed) and task.best_us is None:
            task.best_us = _best_us(database, tasks, task.name)
    chosen = _select(stats, cfg)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    run_info: dict[str, Any] = {"started_at": started, "mlflow_run_id": tracker.run_id,
                                "trials": 0, "wall_s": 0.0, "cost_model": cfg.cost_model.name,
                                "seed": cfg.seed, "trials_per_iter": cfg.trials_per_iter}
    shown_from = warm_from and _shown(warm_from, Path(job.paths.tune_logs_dir))
    if warm_from is not None:
        run_info["warm_start"] = {"from": shown_from, "records": sum(warmed.values()),
                                  "tasks": len(warmed)}
    trials_before = sum(s.trials for s in stats)
    start = time.monotonic()

    def save() -> None:
        run_info["trials"] = sum(s.trials_run for s in stats)
        run_info["wall_s"] = round(time.monotonic() - start, 1)
        write_provenance(folder, _provenance(prepared, model, old, stats, run_info, cfg))

    save()
    tracker.set_tags({"job": "tune", "model": model, "target": target_name})
    tracker.log_params({"tuning": {"trials": cfg.trials, "trials_per_iter": cfg.trials_per_iter,
                                   "max_trials_per_task": cfg.max_trials_per_task,
                                   "max_time_min": cfg.max_time_min,
                                   "cost_model": cfg.cost_model.name, "seed": cfg.seed,
                                   "builder_workers": cfg.builder_workers or threads,
                                   "runner_workers": cfg.runner_workers,
                                   "patience": cfg.patience, "min_weight": cfg.min_weight,
                                   "only_new": cfg.only_new,
                                   "population": cfg.population, "reuse": cfg.reuse,
                                   "parallel_rows": rows is not None,
                                   "depthwise_tiles": cfg.depthwise_tiles},
                        "model": model, "target": {"name": target_name,
                                                   "dict": prepared.target_json,
                                                   "layout": job.target.layout.name},
                        "tasks_total": len(stats), "tasks_tuned_this_run": len(chosen),
                        "tasks_reused": len(reused),
                        "warm_start_from": shown_from, "tasks_warm_started": len(warmed),
                        "trials_before": trials_before, "threads": threads})
    progress = _Progress(stats, chosen, cfg, tracker, save, trials_before)
    # The first round gives every task one batch: keep it within half the budget.
    per_iter = min(cfg.trials_per_iter, max(4, cfg.trials // (2 * max(len(chosen), 1))))
    if per_iter < cfg.trials_per_iter:
        log.info("%d tasks: %d trials per task and round (of tuning.trials_per_iter=%d) so the "
                 "first round fits the budget", len(chosen), per_iter, cfg.trials_per_iter)
    if chosen:
        _tvm.register_tensor_intrinsics(family)
        _reset_metaschedule_logging()
        contexts, weights = _tune_contexts([tasks[i] for i in chosen], prepared.target,
                                           str(scratch), threads, cfg, rows)
        try:
            builder, runner = _measurers(job, threads)
            with _candidate_tmpdir(scratch / "tmp"):
                ms.tune.tune_tasks(
                    tasks=contexts, task_weights=weights, work_dir=str(scratch),
                    max_trials_global=cfg.trials,
                    max_trials_per_task=cfg.max_trials_per_task or cfg.trials,
                    num_trials_per_iter=per_iter, builder=builder, runner=runner,
                    database=database, cost_model=ms.cost_model.CostModel.create(
                        cfg.cost_model.value, num_tuning_cores=threads),
                    measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"),
                                       _make_callback(progress)],
                    task_scheduler="gradient")
        except Exception:
            # The wall-clock cap stops the scheduler by raising from the measure callback;
            # the exception may come back re-wrapped by the FFI, so the flag decides.
            if not progress.stopped_by_time:
                raise
        finally:
            progress.close()
            save()
    if cfg.depthwise_tiles and job.target.kind == TargetKind.llvm:
        # Every task (converged ones too; a workload whose best record has the tiles is
        # skipped), or with tuning.only_new the ones this run tuned.
        _depthwise_tiles(job, prepared, database,
                         [tasks[i] for i in chosen] if cfg.only_new else tasks, stats, threads,
                         scratch, rows, run_info, tracker)
        save()
    wall_s = time.monotonic() - start
    result = TuneResult(model, target_name, folder, stats, progress.trials,
                        sum(s.trials for s in stats), wall_s, progress.curve,
                        run_id=tracker.run_id, warnings=warnings, reused=reused)
    for task in stats:
        if task.trials_run and task.build_errors + task.run_errors == task.trials_run:
            outcome = ("it stays untuned" if task.best_us is None
                       else f"it keeps its earlier best ({task.best_us:.1f} us)")
            result.warnings.append(f"task {task.name}: all {task.trials_run} candidates of this "
                                   f"run failed to build or run; {outcome}")
    _finish(job, result, prepared, folder, tracker, save)
    return result


def _depthwise_tiles(job: CompileJob, prepared: PreparedModel, database: Any, tasks: list[Any],
                     stats: list[TaskStats], threads: int, scratch: Path,
                     rows: RowParallel | None, run_info: dict[str, Any],
                     tracker: Tracker) -> None:
    """Try register-tiled schedules on the depthwise tasks (llvm targets).

    :func:`compile.depthwise_tiles.try_register_tiles` with the job's builder and runner; the
    tasks' best times take the committed records', the run's provenance lists what was tried
    (``depthwise_tiles``) and the MLflow run counts it (``depthwise_tiles_tried``,
    ``depthwise_tiles_committed``).
    """
    with _candidate_tmpdir(scratch / "tmp"):
        tried = try_register_tiles(database, tasks, prepared.target,
                                   *_measurers(job, threads),
                                   keep=rows.accepts if rows else None)
    if not tried:
        return
    by_name = {s.name: s for s in stats}
    for name, outcome in tried.items():
        task = by_name.get(name)
        if outcome["committed"] and task is not None:
            task.best_us = min(task.best_us or math.inf, outcome["variant_us"])
    run_info["depthwise_tiles"] = tried
    tracker.log_metrics({"depthwise_tiles_tried": len(tried),
                         "depthwise_tiles_committed": sum(o["committed"] for o in tried.values())})
    log.info("register-tiled depthwise schedules: %d of %d kernels faster, committed",
             sum(o["committed"] for o in tried.values()), len(tried))


def parallel_rows(cfg: TuningConfig, old: dict[str, Any] | None, folder: Path,
                  new: bool = True) -> bool:
    """``tuning.parallel_rows`` for a run on the database in ``folder`` (llvm targets).

    null takes the database's own setting (``parallel_rows`` in its provenance; false for
    databases tuned before the option existed), and ``new`` for a new database: the caller's
    choice, true for float models in NHWC, where it was measured faster (mobilenet_v2 on an
    Intel Xeon, 2026-11-24: 0.90 × the run time). Tuned so on that Xeon, the 16-bit int8
    mobilenet_v2 (332 trials, 20 min) and ppocr_det in NCHW (703 trials, 25 min) came out
    slower than their former databases (README). One database holds records of one setting:
    the fastest record decides what the compile job builds.

    Raises
    ------
    ConfigError
        ``tuning.parallel_rows`` is set against the database's setting.
    """
    before = None if old is None else bool(old.get("parallel_rows", False))
    if cfg.parallel_rows is None:
        return new if before is None else before
    if before is not None and cfg.parallel_rows != before:
        raise ConfigError(
            f"{folder} was tuned with tuning.parallel_rows={str(before).lower()}: leave "
            "tuning.parallel_rows unset to go on with it, or tune into a new folder "
            "(tuning.database=...)")
    return cfg.parallel_rows


def _other_cpu_database(job: CompileJob, prepared: PreparedModel) -> Path | None:
    """The database this CPU would adopt had it none of its own: tuned on a CPU it runs.

    Its records seed the workloads this CPU's database lacks (:mod:`compile.warm_start`).
    """
    folder = database_folder(job.paths, str(job.model.name), job.target, job.quant.scheme,
                             own_cpu=False)
    provenance = read_provenance(folder)
    if provenance is None or not tuned_on_other_cpu(provenance, prepared.database_key):
        return None
    return folder


def _shown(folder: Path, tune_logs: Path) -> str:
    """``folder`` relative to ``tune_logs`` (provenances stay valid in any checkout)."""
    try:
        return str(folder.resolve().relative_to(tune_logs.resolve()))
    except ValueError:
        return str(folder)


@contextlib.contextmanager
def _candidate_tmpdir(temp: Path) -> Iterator[None]:
    """Builder workers leave one temporary folder per candidate: keep them in ``temp``.

    ``TMPDIR`` points there while the block runs; afterwards the folder is deleted and
    ``TMPDIR`` restored (later work in this process, nvcc or tempfile, must not use it).
    """
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    previous = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(temp)
    try:
        yield
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        if previous is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = previous


def _measurers(job: CompileJob, threads: int) -> tuple[Any, Any]:
    """MetaSchedule's local builder and runner for the job's candidates.

    Made where candidates are measured only: the runner starts its worker process at once.
    """
    cfg = job.tuning
    return (ms.builder.LocalBuilder(max_workers=cfg.builder_workers or threads,
                                    f_build=_builder(job)),
            ms.runner.LocalRunner(timeout_sec=cfg.timeout_s))


def _builder(job: CompileJob) -> Callable:
    """The builder workers' build function, with the target's unroll cap.

    Candidates are built (and so timed) as the compile job builds kernels, with
    :func:`compile.pipeline.unroll_cap`. Tuned with the cap off and compiled with it on, a
    kernel can run far slower than its record says: on Zen 5 one int8 1x1 convolution with a
    fused residual input took 150 us capped at 64 steps against 56 us as tuned (512).
    """
    return functools.partial(build_candidate, max_unroll_steps=unroll_cap(job.target))


def _check_records(job: CompileJob, prepared: PreparedModel, folder: Path) -> list:
    """Check the records pruning would keep against the kernels as written (llvm targets).

    A record whose kernel computes other values is rejected and the workload's next-fastest
    record checked instead (:func:`compile.record_check.check_best_records`).
    """
    if not job.tuning.check or job.target.kind != TargetKind.llvm:
        return []
    start = time.perf_counter()
    rejected = check_best_records(folder, prepared.target, max(job.tuning.keep_per_workload, 1))
    log.info("checked the kept records' kernels against the kernels as written in %.0f s: "
             "%d rejected", time.perf_counter() - start, len(rejected))
    return rejected


def _finish(job: CompileJob, result: TuneResult, prepared: PreparedModel, folder: Path,
            tracker: Tracker, save: Callable[[], None]) -> None:
    """Log the run's tables, plot and full database; check and prune the database on disk.

    Where records are rejected, the tasks' best times (the estimate, the provenance written
    by ``save``) become those of the records kept.
    """
    rows = task_table(result.tasks)
    scratch = Path(job.paths.cache_dir) / "tuning" / result.model / result.target
    scratch.mkdir(parents=True, exist_ok=True)
    plot = scratch / "tuning_curve.png"
    _plot(result.curve, plot, f"{result.model} on {result.target}")
    if tracker.enabled:
        tracker.log_dict(rows, "tasks.json")
        tracker.log_text(_csv(rows), "tasks.csv")
        tracker.log_artifact(plot)
        for name in (WORKLOAD_FILE, RECORD_FILE):
            tracker.log_artifact(folder / name, "database")
        logs = scratch / "logs"
        if logs.is_dir():
            tracker.log_artifact(logs, "metaschedule_logs")
    before = count_records(folder)
    rejected = _check_records(job, prepared, folder)
    result.records_rejected = len(rejected)
    if rejected:
        wrong = [r for r in rejected if not math.isnan(r.relative_error)]
        unchecked = len(rejected) - len(wrong)
        result.warnings.append(
            f"{len(wrong)} tuned record(s) computed other values than their kernel as written "
            f"(workloads {sorted({r.workload for r in rejected})}) and were left out"
            + (f", with {unchecked} slower record(s) of workloads that failed too often, "
               "unchecked" if unchecked else "")
            + ": those kernels keep their fastest correct record, or stay untuned")
    current = frozenset(t.workload for t in result.tasks) if job.tuning.drop_stale else None
    if job.tuning.keep_per_workload > 0 or rejected or current is not None:
        before, result.records_kept = prune(folder, job.tuning.keep_per_workload,
                                            frozenset(r.line for r in rejected), current)
    else:
        result.records_kept = before
    if rejected:  # the estimate counts what the compile job will use
        fastest = fastest_by_workload(folder)
        for task in result.tasks:
            seconds = fastest.get(task.workload)
            task.best_us = None if seconds is None else seconds * 1e6
        save()
    pack(folder)
    tracker.log_artifact(folder / "provenance.json", "database")
    metrics = {"trials_run": result.trials_run, "trials_total": result.trials_total,
               "tuning_wall_s": result.wall_s, "trials_per_min": result.trials_per_min,
               "records_before_prune": before, "records_kept": result.records_kept,
               "records_rejected": result.records_rejected,
               "tasks_total": len(result.tasks),
               "tasks_skipped": sum(1 for t in result.tasks if t.skipped)}
    if result.est_latency_ms is not None:
        metrics["est_latency_ms_final"] = result.est_latency_ms
    tracker.log_metrics(metrics)
    log.info("tuning database %s: %d records kept of %d", folder, result.records_kept, before)
