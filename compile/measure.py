"""Kernels built and timed as MetaSchedule times its candidates, outside a search.

The tuning job's steps that add records it did not search for (:mod:`compile.warm_start`,
:mod:`compile.depthwise_tiles`) time them with the job's own builder and runner, so that their
times compare with the search's.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from . import _tvm

ms = _tvm.ms


def time_kernels(mods: list[Any], args_info: list[Any], target: Any, builder: Any,
                 runner: Any) -> list[list[float] | None]:
    """Build and run scheduled kernels; each one's run times, seconds.

    Parameters
    ----------
    mods : list of tvm.IRModule
        Scheduled kernels (a tuning record's trace applied, postprocessors included).
    args_info : list of list of ms.arg_info.ArgInfo
        Each kernel's arguments (shapes, dtypes), as its tuning record keeps them.
    target : tvm.target.Target
        The kernels are built for it and run on its device (``cuda`` or ``cpu``).
    builder : ms.builder.Builder
    runner : ms.runner.Runner

    Returns
    -------
    list of (list of float or None)
        Per kernel, in order: the runner's times (``run_secs``), or None where it failed to
        build or to run. Build artifacts are removed.
    """
    builds = builder.build([ms.builder.BuilderInput(mod, target) for mod in mods])
    built = [(i, result.artifact_path) for i, result in enumerate(builds)
             if result.error_msg is None]
    device = "cuda" if target.kind.name == "cuda" else "cpu"
    futures = runner.run([ms.runner.RunnerInput(path, device, args_info[i]) for i, path in built])
    seconds: list[list[float] | None] = [None] * len(mods)
    for (i, path), future in zip(built, futures, strict=True):
        result = future.result()
        shutil.rmtree(Path(path).parent, ignore_errors=True)
        if result.error_msg is None and result.run_secs:
            seconds[i] = [float(s) for s in result.run_secs]
    return seconds
