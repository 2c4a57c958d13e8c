"""Keep each CPU thread on the image rows that it wrote in the kernel before.

TVM runs a parallel loop in contiguous chunks, one per thread of its pool, so how a schedule
fuses its outer tiles into the parallel loop decides which part of a tensor each thread writes.
MetaSchedule times every kernel alone, over and over, so that each core's cache already holds
what that core reads. Inside a run it holds what that core wrote in the kernel before. When a
kernel splits its work among threads by output channels and its producer split by rows, each
thread reads half of its input from the other core's cache.

The cost, measured on an Intel Xeon (Sapphire Rapids, 2 cores, 2 threads, 2026-11-24;
mobilenet_v2's float32 NHWC kernels tuned there): its 14 × 14, 384 → 64 projection,
split by output channels, took 26 µs alone, 48 µs right after the depthwise convolution that
writes its input split by rows, and 42-44 µs after a 32 MB sweep of the caches. On one thread
it took 45-50 µs either way. The record of that kernel split by rows, 25 µs alone, took 32 µs
in a run against 50 µs.

:func:`rows_split` tells whether a scheduled kernel splits its output rows among threads;
:class:`RowParallel` is a MetaSchedule post-processor that rejects the candidates that do not.
"""

from __future__ import annotations

from typing import Any

import tvm

from . import _tvm

#: The rows' axis in a kernel's 4-D output, by the model's layout (compile.config.Layout names).
ROW_AXIS = {"NHWC": 1, "NCHW": 2}

#: Output rows below which a kernel may split its work any way (7 × 7 layers: at 2 threads a
#: split by rows gives one thread 4 rows, the other 3, and their tensors are small).
MIN_ROWS = 14


def rows_split(func: tvm.tirx.PrimFunc, min_rows: int = MIN_ROWS, axis: int = 1) -> bool:
    """Whether every parallel loop of a kernel splits its output rows among threads.

    The output is the kernel's last parameter, 4-D with its rows on ``axis`` (1 for NHWC, 2
    for NCHW). A block counts when it writes a buffer of the output's shape: the output, its
    accumulators and its epilogues. Its row index must depend on the variable of each parallel
    loop around it, and its indices on the axes between the batch and the rows (NCHW: the
    channels) must not. TVM gives each thread a contiguous chunk of the fused parallel loop; the
    batch comes first and is 1 here, and MetaSchedule fuses the outer tiles in the order of the
    axes, so then the chunks split the rows.

    Parameters
    ----------
    func : tvm.tirx.PrimFunc
        A scheduled kernel (TIR with blocks).
    min_rows : int
        Kernels whose output has fewer rows (or is not 4-D) pass as they are.
    axis : int
        The rows' axis in the output.

    Returns
    -------
    bool
    """
    if not func.params:
        return True
    shape = tuple(int(d) for d in func.params[-1].shape)
    if len(shape) != 4 or shape[axis] < min_rows:
        return True
    return _walk(func.body, [], shape, axis)


def _walk(stmt: Any, parallel: list, shape: tuple[int, ...], axis: int) -> bool:
    """Check the blocks under ``stmt``; ``parallel`` lists the parallel loops around it."""
    if stmt is None:
        return True
    if isinstance(stmt, tvm.tirx.SeqStmt):
        return all(_walk(s, parallel, shape, axis) for s in stmt.seq)
    if isinstance(stmt, tvm.tirx.For):
        inner = parallel
        if stmt.kind == tvm.tirx.ForKind.PARALLEL and int(stmt.extent) > 1:
            inner = [*parallel, stmt.loop_var]
        return _walk(stmt.body, inner, shape, axis)
    if isinstance(stmt, _tvm.SBlockRealize):
        return _block_ok(stmt, parallel, shape, axis) and all(
            _walk(s, parallel, shape, axis) for s in (stmt.block.init, stmt.block.body))
    if isinstance(stmt, tvm.tirx.IfThenElse):
        return all(_walk(s, parallel, shape, axis) for s in (stmt.then_case, stmt.else_case))
    body = getattr(stmt, "body", None)  # AttrStmt, LetStmt, DeclBuffer, ...
    return _walk(body, parallel, shape, axis) if isinstance(body, tvm.tirx.Stmt) else True


def _block_ok(realize: Any, parallel: list, shape: tuple[int, ...], axis: int) -> bool:
    if not parallel:
        return True
    block = realize.block
    bound = {iv.var: value
             for iv, value in zip(block.iter_vars, realize.iter_values, strict=True)}
    for region in block.writes:
        if tuple(int(d) for d in region.source.shape) != shape:
            continue
        rows = _loop_vars(region.region[axis].min, bound)
        outer = set().union(*(_loop_vars(region.region[k].min, bound) for k in range(1, axis)))
        if any(loop not in rows or loop in outer for loop in parallel):
            return False
    return True


def _loop_vars(index: Any, bound: dict) -> set:
    """The loop variables an index of a block's write region depends on."""
    return {v for iv in tvm.tirx.analysis.undefined_vars(index)
            for v in tvm.tirx.analysis.undefined_vars(bound.get(iv, iv))}


@_tvm.derived_object
class RowParallel(_tvm.ms.postproc.PyPostproc):
    """MetaSchedule post-processor: reject candidates whose threads do not split output rows.

    Added after the target's own post-processors (:func:`compile.tuning.search_space`), so
    it sees the final schedule. See :func:`rows_split`.
    """

    def __init__(self, axis: int = 1, min_rows: int = MIN_ROWS) -> None:
        self.axis, self.min_rows = axis, min_rows

    def _initialize_with_tune_context(self, context: Any) -> None:
        pass

    def apply(self, sch: Any) -> bool:
        """Whether the candidate ``sch`` splits output rows (False: MetaSchedule drops it)."""
        return self.accepts(sch.mod["main"])

    def accepts(self, func: tvm.tirx.PrimFunc) -> bool:
        """:func:`rows_split` with this post-processor's settings."""
        return rows_split(func, self.min_rows, self.axis)

    def clone(self) -> RowParallel:
        """A copy for another tune context."""
        return RowParallel(self.axis, self.min_rows)
