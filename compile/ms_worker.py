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
