"""Static shapes of Relax types (shared by passes)."""

from __future__ import annotations

import tvm


def static_shape(ty) -> tuple[int, ...] | None:
    """The dimensions of a Relax tensor type as ints; None when unknown or any is symbolic."""
    dims = getattr(getattr(ty, "shape", None), "values", None)
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return tuple(int(d) for d in dims)
