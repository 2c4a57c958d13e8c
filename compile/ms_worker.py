"""Build function for MetaSchedule's builder workers (imported in each worker process).

MetaSchedule's ``default_build`` imports ``tvm.s_tir.tensor_intrin`` in every worker, which
registers the tensor intrinsics of every backend by parsing TVMScript: 26 s per worker here
(CUDA's alone 20 s), and the builder starts new workers for every batch. Candidates arrive
already scheduled (tensorized blocks are expanded in the main process), so building them needs
no intrinsic registry. This module imports nothing but TVM (and the project's passes only when
a candidate's unrolling is capped).
"""

from __future__ import annotations

import tvm
from tvm.driver import build as tvm_build
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

#: The annotation of the block MetaSchedule's ``RewriteLayout`` postproc inserts to copy a
#: weight into the layout the schedule reads (the compile job folds it into the constants:
#: ``SplitLayoutRewritePreproc``, ``compile.pipeline``).
LAYOUT_REWRITE_PREPROC = "meta_schedule.layout_rewrite_preproc"


class LayoutRewriteError(ValueError):
    """A candidate's weight layout rewrite keeps fewer elements than the weight has."""


def check_layout_rewrites(mod: tvm.IRModule) -> None:
    """Refuse a candidate whose weight layout rewrite drops elements.

    TVM 0.27's ``RewriteLayout`` postproc can derive a new layout that drops an axis of the
    weight: ppocr_det's ConvTranspose weight, ``[24, 1, 2, 2]`` (in, out, kh, kw), read through
    a transposing block as ``[1, 24, 2, 2]``, rewritten to ``[1, 2, 2]`` (a unit axis read
    out of place; ``tests/test_tuning.py`` has the smallest case). The kernel then computes
    other values, but the tuning builder removes the rewrite block and times it all the same,
    as the fastest (Intel Xeon, 2026-11-24: 27 of the workload's 31 records, every one of them
    rejected by the record check). Refused here, such a candidate is a build error: not timed,
    not kept, and the search breeds no variants of it.

    Raises
    ------
    LayoutRewriteError
        A block annotated :data:`LAYOUT_REWRITE_PREPROC` writes a buffer with fewer elements
        than the one it reads (static shapes only).
    """
    from tvm import s_tir

    sch = s_tir.Schedule(mod)
    for gvar, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        for rv in sch.get_child_blocks(sch.get_sblock("root", func_name=gvar.name_hint)):
            block = sch.get(rv)
            if LAYOUT_REWRITE_PREPROC not in block.annotations:
                continue
            read, write = block.reads[0].source, block.writes[0].source
            sizes = [_elements(buffer.shape) for buffer in (read, write)]
            if None not in sizes and sizes[1] < sizes[0]:
                raise LayoutRewriteError(
                    f"layout rewrite of {read.name} {_dims(read.shape)} to "
                    f"{_dims(write.shape)} drops elements (TVM's RewriteLayout)")


def _elements(shape) -> int | None:
    total = 1
    for extent in shape:
        if not isinstance(extent, tvm.tirx.IntImm):
            return None
        total *= int(extent)
    return total


def _dims(shape) -> list:
    return [int(v) if isinstance(v, tvm.tirx.IntImm) else v for v in shape]


def candidate_module(mod: tvm.IRModule, max_unroll_steps: int | None = None) -> tvm.IRModule:
    """The module a candidate is built from: as the compile job would build its kernel.

    Parameters
    ----------
    mod : tvm.IRModule
        The scheduled PrimFunc module MetaSchedule sends.
    max_unroll_steps : int or None
        ``target.max_unroll_steps``: the compile job lowers the candidate's explicit unrolling
        to this cap (``compile.passes.CapUnroll``), so the candidate is timed capped too.
        None: as scheduled.
    """
    check_layout_rewrites(mod)
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    if max_unroll_steps is not None:
        from .passes.cap_unroll import CapUnroll

        mod = CapUnroll(max_unroll_steps)(mod)
    return mod


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params,
                    max_unroll_steps: int | None = None) -> tvm.runtime.Module:
    """Build one scheduled candidate, as MetaSchedule's ``default_build`` does.

    Parameters
    ----------
    mod : tvm.IRModule
        The scheduled PrimFunc module.
    target : tvm.target.Target
    _params : None
        Unused (MetaSchedule passes None for PrimFunc tasks).
    max_unroll_steps : int or None
        See :func:`candidate_module` (bound with ``functools.partial`` by the tuning job).
    """
    from .targets import build_target  # built as the compile job builds (runs on this CPU)

    return tvm_build(candidate_module(mod, max_unroll_steps), target=build_target(target))
