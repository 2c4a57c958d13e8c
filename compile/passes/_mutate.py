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


def rewrite_each_function(mod: tvm.IRModule, rewrite, base=None) -> tvm.IRModule:
    """Apply a function-level rewrite (e.g. ``relax.dpl.rewrite_call``) to every Relax function.

    Parameters
    ----------
    mod : tvm.IRModule
    rewrite : callable
        ``relax.Function -> relax.Function``; returns its argument where nothing matched.
    base : callable, optional
        Called after the rewrites when something changed: the module the new functions go into
        (a block builder's, holding the PrimFuncs the rewrite added). Default: a copy of ``mod``.

    Returns
    -------
    tvm.IRModule
        ``mod`` itself when no function changed, else the new module, normalized.
    """
    updates = {gv: new for gv, func in mod.functions.items()
               if isinstance(func, relax.Function) and not (new := rewrite(func)).same_as(func)}
    if not updates:
        return mod
    new_mod = base() if base is not None else mod.clone()
    for gv, func in updates.items():
        new_mod[gv] = func
    return relax.transform.Normalize()(new_mod)
