"""Build function for MetaSchedule's builder workers (imported in each worker process).

MetaSchedule's ``default_build`` imports ``tvm.s_tir.tensor_intrin`` in every worker, which
registers the tensor intrinsics of every backend by parsing TVMScript: 26 s per worker here
(CUDA's alone 20 s), and the builder starts new workers for every batch. Candidates arrive
already scheduled (tensorized blocks are expanded in the main process), so building them needs
no intrinsic registry. This module imports nothing but TVM.
"""

from __future__ import annotations

import tvm
from tvm.driver import build as tvm_build
from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params) -> tvm.runtime.Module:
    """Build one scheduled candidate, as MetaSchedule's ``default_build`` does.

    Parameters
    ----------
    mod : tvm.IRModule
        The scheduled PrimFunc module.
    target : tvm.target.Target
    _params : None
        Unused (MetaSchedule passes None for PrimFunc tasks).
    """
    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)
