"""Register-tiled schedules for depthwise convolutions, tried next to the tuning job's records.

MetaSchedule tiles a depthwise convolution (TOPI's ``group_conv2d_nhwc`` or
``group_conv2d_nchw`` block with one input channel per group) with its CPU rule ``SSRSRS``
and samples every tile size at random. On mobilenet_v2's 16-bit int8 model (AMD Zen 5,
2 threads) its evolutionary search had not reached, in 5836 trials, the tiles that keep the
accumulators in registers across the taps, as oneDNN's depthwise kernels keep them: in NHWC an
output-width tile of 4-8 pixels and a 16-channel tile innermost (one AVX-512 register of int32
or float32), the whole kh×kw reduction just outside them. Those tiles, on the records' own
traces, were 5-30 % faster on 16 of its 21 16-bit depthwise workloads (56×56×144: 52 against
60-63 µs; README, 2026-11-25); in NCHW the vectors run along the output's columns instead.

After the search, :func:`try_register_tiles` takes each depthwise task's best record, replays
its trace with those tile decisions (:func:`tile_variants`: at most twelve variants), builds and
times the record and the variants side by side with the tuning job's own builder and runner,
``repeats`` times, and commits a variant whose median time is at least ``min_gain`` below both
the record's median and its database time. What is committed is a measured tuning record like
any other: the tuning job's record check then runs its kernel against the kernel as written,
and pruning keeps the fastest. A workload whose best record already has such tiles is left
alone, so a resumed job does not time them again.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import _tvm
from .measure import time_kernels
from .tuning_db import replayed

log = logging.getLogger(__name__)
ms = _tvm.ms

#: TOPI's blocks of grouped convolutions (Relax legalizes depthwise ``conv2d`` to them) ->
#: the ``SamplePerfectTile`` index of each of their loops: output batch, channels, rows and
#: columns; kernel rows and columns; input channels per group (one: depthwise). MetaSchedule
#: tiles the block's loops in their order.
DEPTHWISE_BLOCKS = {
    "group_conv2d_nhwc": {"batch": 0, "rows": 1, "columns": 2, "channels": 3, "kernel_h": 4,
                          "kernel_w": 5, "group": 6},
    "group_conv2d_nchw": {"batch": 0, "channels": 1, "rows": 2, "columns": 3, "group": 4,
                          "kernel_h": 5, "kernel_w": 6},
}
#: The unroll decision of MetaSchedule's ``ParallelizeVectorizeUnroll`` rule on CPUs
#: (``meta_schedule.unroll_explicit`` steps): index 1 is 16 steps, 2 is 64.
UNROLL_CHOICES = (0, 16, 64, 512)


@dataclass(frozen=True)
class Depthwise:
    """A kernel's depthwise convolution: its block, output shape and kernel size."""

    block: str
    channels: int
    rows: int
    columns: int
    kernel_h: int
    kernel_w: int

    @property
    def loops(self) -> dict[str, int]:
        """Loop name -> ``SamplePerfectTile`` index (:data:`DEPTHWISE_BLOCKS`)."""
        return DEPTHWISE_BLOCKS[self.block]


def find_depthwise(mod: Any, trace: Any) -> Depthwise | None:
    """A kernel's depthwise convolution, where a trace tiles it as MetaSchedule's CPU rules do.

    Parameters
    ----------
    mod : tvm.IRModule
        The workload (a fused kernel, unscheduled).
    trace : tvm.s_tir.Trace
        A tuning record's trace of it.

    Returns
    -------
    Depthwise or None
        Where the kernel has a block of :data:`DEPTHWISE_BLOCKS` with one input channel per
        group, the trace's first seven ``SamplePerfectTile`` decisions tile exactly its loops
        and the trace has the unroll decision; None otherwise.
    """
    names = {str(inst.attrs[0]) for inst in trace.insts if inst.kind.name == "GetSBlock"}
    found = [name for name in DEPTHWISE_BLOCKS if name in names]
    if len(found) != 1:
        return None
    schedule = _tvm.Schedule(mod)
    try:
        block = schedule.get(schedule.get_sblock(found[0]))
    except Exception:  # noqa: BLE001  (no such block in this kernel)
        return None
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    loops = DEPTHWISE_BLOCKS[found[0]]
    if len(extents) != 7 or extents[loops["group"]] != 1 or extents[loops["batch"]] != 1:
        return None
    tiles = _tiles(trace)
    if len(tiles) < 7 or _unroll(trace) is None:
        return None
    decided = [math.prod(int(v) for v in trace.decisions[inst]) for inst in tiles[:7]]
    if decided != extents:
        return None
    return Depthwise(found[0], *(extents[loops[k]] for k in
                                 ("channels", "rows", "columns", "kernel_h", "kernel_w")))


def _tiles(trace: Any) -> list[Any]:
    return [inst for inst in trace.insts if inst.kind.name == "SamplePerfectTile"]


def _unroll(trace: Any) -> Any | None:
    for inst in trace.insts:
        if (inst.kind.name == "SampleCategorical"
                and tuple(int(v) for v in inst.attrs[0]) == UNROLL_CHOICES):
            return inst
    return None


def tile_variants(dw: Depthwise) -> list[dict[str, list[int] | int]]:
    """The register-tiled decisions to try for a depthwise convolution (at most twelve).

    The innermost tile holds the accumulators (``rows x columns x channels`` values, one or
    a few AVX-512 registers), the whole kernel window is the reduction tile just outside it,
    the other channels and columns next, and the rows outermost (the threads split them).
    NHWC vectorizes channels: 16 (8 where C is no multiple of 16; nothing tried where C is no
    multiple of 8) × the two largest divisors of W in [4, 8] (W where none) columns × 1 or 2
    rows, unrolled 16 or 64 steps (eight variants). NCHW vectorizes columns: one channel ×
    the two largest divisors of W in [8, 32], multiples of 8 first, × 1, 2 or 4 rows,
    unrolled 64 or 512 steps (twelve; on ppocr_det's 2, 4 and 512 won more often than 1 and
    16, 2026-11-25).

    Parameters
    ----------
    dw : Depthwise
        :func:`find_depthwise`.

    Returns
    -------
    list of dict
        Loop name (``rows``, ``columns``, ``channels``, ``kernel_h``, ``kernel_w``) -> its
        tile sizes outermost first (four; two for the kernel's), and ``"unroll"`` -> the
        unroll decision's index in :data:`UNROLL_CHOICES`.
    """
    if dw.block == "group_conv2d_nhwc":
        lanes = 16 if dw.channels % 16 == 0 else 8 if dw.channels % 8 == 0 else None
        if lanes is None:
            return []
        columns = [d for d in range(4, 9) if dw.columns % d == 0][-2:] or [dw.columns]
        row_tiles, unrolls = (1, 2), (1, 2)
    else:
        lanes = 1
        columns = sorted((d for d in range(8, 33) if dw.columns % d == 0),
                         key=lambda d: (d % 8 == 0, d))[-2:]
        row_tiles, unrolls = (1, 2, 4), (2, 3)
    return [{"rows": [dw.rows // rows, 1, 1, rows],
             "columns": [1, dw.columns // cols, 1, cols],
             "channels": [1, dw.channels // lanes, 1, lanes],
             "kernel_h": [1, dw.kernel_h], "kernel_w": [1, dw.kernel_w], "unroll": unroll}
            for cols in columns for rows in row_tiles if dw.rows % rows == 0
            for unroll in unrolls]


def describe(spec: dict) -> str:
    """A variant's innermost tiles: ``"rows 2 x columns 4 x channels 16, unroll 64"``."""
    return (f"rows {spec['rows'][-1]} x columns {spec['columns'][-1]} x channels "
            f"{spec['channels'][-1]}, unroll {UNROLL_CHOICES[spec['unroll']]}")


def _decisions(trace: Any, dw: Depthwise, spec: dict) -> bool:
    """Whether a trace already has the decisions of ``spec``."""
    tiles = _tiles(trace)
    for key, value in spec.items():
        inst = _unroll(trace) if key == "unroll" else tiles[dw.loops[key]]
        have = trace.decisions[inst]
        have = int(have) if key == "unroll" else [int(v) for v in have]
        if have != value:
            return False
    return True


def variant_schedule(mod: Any, trace: Any, dw: Depthwise, spec: dict,
                     target: Any) -> Any | None:
    """The kernel scheduled by ``trace`` with the decisions of ``spec``, as the search would.

    The schedule must pass the target's postprocessors (MetaSchedule's ``post-order-apply``
    space generator's, as for its own candidates) and replaying the resulting trace must give
    the same kernel (tuning records are replayed so).

    Parameters
    ----------
    mod : tvm.IRModule
        The workload.
    trace : tvm.s_tir.Trace
        A record's trace of it.
    dw : Depthwise
        Its depthwise convolution (:func:`find_depthwise`).
    spec : dict
        One of :func:`tile_variants`.
    target : tvm.target.Target

    Returns
    -------
    tvm.s_tir.Schedule or None
        None where the decisions do not apply or a postprocessor refuses them.
    """
    tiles = _tiles(trace)
    for key, value in spec.items():
        inst = _unroll(trace) if key == "unroll" else tiles[dw.loops[key]]
        trace = trace.with_decision(inst, value, remove_postproc=True)
        tiles = _tiles(trace)
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             task_name="depthwise_tiles")
    schedules = []
    for source in (trace, None):  # applied, then its own trace replayed
        schedule = _tvm.Schedule(mod)
        try:
            (source or schedules[0].trace).apply_to_schedule(schedule, remove_postproc=True)
            schedule.enter_postproc()
            if not all(p.apply(schedule) for p in context.space_generator.postprocs):
                return None
        except Exception:  # noqa: BLE001  (ScheduleError, TVMError: decisions that do not fit)
            return None
        schedules.append(schedule)
    if not _tvm.structural_equal(schedules[0].mod, schedules[1].mod):
        return None
    return schedules[0]


def try_register_tiles(database: Any, tasks: list[Any], target: Any, builder: Any, runner: Any,
                       repeats: int = 3, min_gain: float = 0.05,
                       keep: Callable[[Any], bool] | None = None) -> dict[str, dict[str, Any]]:
    """Time register-tiled variants of the depthwise tasks' best records; commit the faster.

    Parameters
    ----------
    database : ms.database.Database
        The tuning job's database: read for each task's best record, committed to.
    tasks : list of ExtractedTask
        The tasks to try (those without a depthwise convolution are skipped).
    target : tvm.target.Target
        An llvm target: kernels are built for it and records committed with it.
    builder : ms.builder.Builder
    runner : ms.runner.Runner
        The tuning job's own, so that the times compare with its candidates'.
    repeats : int
        Times the record and its variants are timed side by side; medians are compared.
    min_gain : float
        A variant is committed where its median is below ``(1 - min_gain)`` times both the
        record's median and its database time.
    keep : callable, optional
        Takes a variant's scheduled kernel (``tvm.tirx.PrimFunc``); variants it rejects are
        not tried (``tuning.parallel_rows``: :func:`compile.row_parallel.rows_split`).

    Returns
    -------
    dict of str to dict
        Task name -> ``{"record_us", "variant_us", "variant", "committed"}`` for each
        depthwise task timed: the medians of its best record and fastest variant (µs), that
        variant's tiles (:func:`describe`) and whether it was committed.
    """
    candidates = []  # (task, workload, record, its kernel, [(variant's schedule, spec)])
    for task in tasks:
        mod = task.dispatched[0]
        if not database.has_workload(mod):
            continue
        workload = database.commit_workload(mod)
        best = database.get_top_k(workload, 1)
        if not best or not best[0].run_secs:
            continue
        record = best[0]
        dw = find_depthwise(mod, record.trace)
        if dw is None:
            continue
        specs = tile_variants(dw)
        if not specs or any(_decisions(record.trace, dw, spec) for spec in specs):
            continue
        scheduled = replayed(record.trace, mod)
        variants = [(schedule, spec) for spec in specs
                    if (schedule := variant_schedule(mod, record.trace, dw, spec, target))
                    is not None and (keep is None or keep(schedule.mod["main"]))]
        if scheduled is not None and variants:
            candidates.append((task, workload, record, scheduled, variants))
    if not candidates:
        return {}
    # Every kernel once per repeat, the record's first: side by side, in one batch each.
    mods, args = [], []
    for _, _, record, scheduled, variants in candidates:
        mods += [scheduled, *(schedule.mod for schedule, _ in variants)]
        args += [record.args_info] * (1 + len(variants))
    runs = [[math.inf if secs is None else statistics.fmean(secs)
             for secs in time_kernels(mods, args, target, builder, runner)]
            for _ in range(repeats)]
    medians = iter([statistics.median(times) for times in zip(*runs, strict=True)])
    found: dict[str, dict[str, Any]] = {}
    for task, workload, record, _, variants in candidates:
        record_s = next(medians)
        times = [next(medians) for _ in variants]
        fastest = min(range(len(times)), key=times.__getitem__)
        (schedule, spec), variant_s = variants[fastest], times[fastest]
        database_s = statistics.fmean(float(s) for s in record.run_secs)
        committed = variant_s < (1 - min_gain) * min(record_s, database_s)
        if committed:
            database.commit_tuning_record(ms.database.TuningRecord(
                schedule.trace, workload, [variant_s], target, record.args_info))
        found[task.task_name] = {
            "record_us": round(record_s * 1e6, 2), "variant_us": round(variant_s * 1e6, 2),
            "variant": describe(spec), "committed": committed}
        log.info("%s: record %.1f us, register-tiled %.1f us%s", task.task_name,
                 record_s * 1e6, variant_s * 1e6, " (committed)" if committed else "")
    return found
