"""Running a Relax ``PyExprMutator`` over every Relax function of a module (shared by passes)."""

from __future__ import annotations

import tvm
from tvm import relax


def rewrite_functions(mod: tvm.IRModule, rewriter, changed) -> tvm.IRModule:
    """Visit every Relax function of ``mod`` with ``rewriter``; the new module if ``changed()``.

    Parameters
    ----------
    mod : tvm.IRModule
    rewriter : relax.PyExprMutator
        Built over ``mod`` (PrimFuncs it adds go to its block builder).
    changed : callable
        Called after the visit: whether the rewriter rewrote anything (else ``mod`` is returned).
    """
    updates = {gv: rewriter.visit_expr(func) for gv, func in mod.functions.items()
               if isinstance(func, relax.Function)}
    if not changed():
        return mod
    for gv, func in updates.items():
        rewriter.builder_.update_func(gv, func)
    return rewriter.builder_.get()


def rewrite_counted(mod: tvm.IRModule, rewriter) -> tuple[tvm.IRModule, int]:
    """:func:`rewrite_functions` with a rewriter that counts its rewrites in ``count``.

    Returns
    -------
    mod : tvm.IRModule
        The new module, or ``mod`` itself when nothing was rewritten.
    count : int
        ``rewriter.count`` after the visit.
    """
    new = rewrite_functions(mod, rewriter, lambda: rewriter.count > 0)
    return new, rewriter.count
