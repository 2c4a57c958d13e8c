"""A new CPU's tuning database started from another CPU's best records, re-timed on this one.

A tuning record's run time was measured on the CPU that tuned it, so records of two CPUs cannot
share a database as they are. Yet the schedules carry over: on an Intel Xeon (Sapphire
Rapids), mobilenet_v2's 8-bit database tuned on an AMD Zen 5 (4258 trials) gave a faster model
than 1204 trials tuned from scratch on the Xeon (2.40 ms against 2.78 ms at 2 threads, README).
So when the tuning job starts a database for this CPU next to one tuned on another CPU that
this one runs, each workload's records from there are built and timed here, as MetaSchedule
times its candidates (same builder and runner), and committed with this machine's times and
target. The search then starts from them: MetaSchedule's evolutionary search seeds its
population with each workload's best records in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import _tvm
from .measure import time_kernels
from .tuning_db import open_database, records_to_take

log = logging.getLogger(__name__)
ms = _tvm.ms


def retime_records(database: Any, tasks: list[Any], source: Path, target: Any,
                   builder: Any, runner: Any, top_k: int = 4,
                   keep: Callable[[Any], bool] | None = None) -> dict[str, int]:
    """Time the best records of another CPU's database here and commit them to ``database``.

    Only workloads that have no record in ``database`` yet are taken (a database resumed on
    this CPU keeps its own measurements). A record whose schedule does not apply to the task's
    kernel, fails to build or fails to run is left out.

    Parameters
    ----------
    database : ms.database.JSONDatabase
        This CPU's database (records are committed to it).
    tasks : list of ExtractedTask
        The tuning job's tasks.
    source : Path
        The folder of the database tuned on the other CPU (same model, pipeline, TVM version).
    target : tvm.target.Target
        This job's target: the records are built for it and committed with it.
    builder : ms.builder.Builder
    runner : ms.runner.Runner
        The tuning job's own, so that the times compare with its candidates'.
    top_k : int
        Records taken per workload, fastest first (committed databases keep one).
    keep : callable, optional
        Takes a record's scheduled kernel (``tvm.tirx.PrimFunc``); records it rejects are left
        out (``tuning.parallel_rows``: :func:`compile.row_parallel.rows_split`).

    Returns
    -------
    dict of str to int
        Task name -> records timed and committed.
    """
    todo = [(task, record, scheduled)  # (task, record, scheduled module)
            for task, records in records_to_take(database, open_database(source, read_only=True),
                                                  tasks, top_k)
            for record, scheduled in records
            if keep is None or keep(scheduled["main"])]
    if not todo:
        return {}
    seconds = time_kernels([mod for _, _, mod in todo],
                           [record.args_info for _, record, _ in todo], target, builder, runner)
    timed: dict[str, int] = {}
    for (task, record, _), run_secs in zip(todo, seconds, strict=True):
        if run_secs is None:
            continue
        workload = database.commit_workload(task.dispatched[0])
        database.commit_tuning_record(ms.database.TuningRecord(
            record.trace, workload, run_secs, target, record.args_info))
        timed[task.task_name] = timed.get(task.task_name, 0) + 1
    log.info("warm start: timed %d of %d records from %s here (the others failed to build "
             "or run)", sum(timed.values()), len(todo), source)
    return timed
