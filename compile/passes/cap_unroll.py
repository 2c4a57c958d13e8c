"""CapUnroll: bound the explicit loop unrolling that tuned CPU schedules ask for.

MetaSchedule's CPU design space samples ``pragma_auto_unroll_max_step`` from {0, 16, 64, 512}
(``ScheduleRule.ParallelizeVectorizeUnroll``; the ``llvm`` defaults in
``src/s_tir/meta_schedule/schedule_rule/schedule_rule.cc``) with ``pragma_unroll_explicit``, so
TIR's ``UnrollLoop`` copies loop bodies up to 512 times before LLVM sees them. Tuning picks 512
where it measured a few percent faster and ignores code size: in the int8 MobileNetV2 library the
first convolution alone was 122 KB of code. This pass lowers every such annotation above
``max_steps`` to ``max_steps`` after the tuned schedules are applied (measured on this project's
MobileNetV2 artifacts, fp32 and int8, 1 and 2 threads: the p50 change is within run-to-run noise,
and the int8 library shrinks from 4.80 to 4.54 MB).
"""

from __future__ import annotations

import tvm
from tvm import tirx
from tvm.s_tir import Schedule

PRAGMA = "pragma_auto_unroll_max_step"


def _blocks(sch: Schedule, parent):
    for block in sch.get_child_blocks(parent):
        yield block
        yield from _blocks(sch, block)


def cap_primfunc(func: tirx.PrimFunc, max_steps: int) -> tuple[tirx.PrimFunc, int]:
    """Return ``func`` with every unroll annotation above ``max_steps`` lowered to it.

    Parameters
    ----------
    func : tvm.tirx.PrimFunc
        A scheduled PrimFunc (with a root block, as MetaSchedule schedules are).
    max_steps : int
        Largest ``pragma_auto_unroll_max_step`` kept (``0`` turns explicit unrolling off).

    Returns
    -------
    func : tvm.tirx.PrimFunc
        The same function when nothing was above the cap.
    changed : int
        Number of loops whose annotation was lowered.
    """
    sch = Schedule(tvm.IRModule({"main": func}))
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001  (a PrimFunc without blocks has nothing to cap)
        return func, 0
    changed = 0
    for block in _blocks(sch, root):
        for loop in sch.get_loops(block):
            steps = sch.get(loop).annotations.get(PRAGMA)
            if steps is not None and int(steps) > max_steps:
                sch.unannotate(loop, PRAGMA)
                sch.annotate(loop, PRAGMA, max_steps)
                changed += 1
    return (sch.mod["main"], changed) if changed else (func, 0)


@tvm.transform.module_pass(opt_level=0, name="CapUnroll")
class CapUnroll:
    """Lower explicit unroll annotations above ``max_steps`` in every PrimFunc of a module.

    Parameters
    ----------
    max_steps : int
        Largest ``pragma_auto_unroll_max_step`` kept, >= 0.
    """

    def __init__(self, max_steps: int):
        if max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {max_steps}")
        self.max_steps = max_steps

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        """Apply the cap to each PrimFunc; Relax functions pass through."""
        updates = {}
        for gvar, func in mod.functions.items():
            if isinstance(func, tirx.PrimFunc):
                capped, changed = cap_primfunc(func, self.max_steps)
                if changed:
                    updates[gvar] = capped
        if not updates:
            return mod
        functions = {gvar: updates.get(gvar, func) for gvar, func in mod.functions.items()}
        return tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos)
