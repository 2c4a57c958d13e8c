"""Tuned kernels checked against the kernel as written, before a database keeps them.

MetaSchedule measures how fast candidates run, not what they compute. A schedule that LLVM
turns into wrong code is then kept as the best record, and every artifact compiled with the
database computes wrong values: on an AMD Zen 5, ppocr_det's best schedule for its final
``ConvTranspose`` + sigmoid kernel did (the compile job's verification refused the artifact,
cosine 0.17 against ONNX Runtime). So at the end of a tuning run, the record each workload would
keep is built and run on random inputs next to the workload's PrimFunc as written (no schedule:
plain loops), and a record whose buffers differ, or that writes past the end (or start) of one,
is rejected; the workload's next-fastest record is checked in its place.

Only targets this machine runs are checked (llvm for this CPU's instruction sets).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from . import _tvm
from . import intrinsics as _intrinsics  # noqa: F401  (registers the intrinsics records name)
from .targets import build_target
from .tuning_db import records_by_workload

log = logging.getLogger(__name__)

#: Relative L2 error above which a tuned kernel's buffer counts as different from the
#: untuned one. Float sums in another order differ by ~1e-6; wrong code by far more.
MAX_RELATIVE_ERROR = 1e-3


@dataclass
class Rejected:
    """A tuning record whose kernel computes other values than its workload as written.

    Attributes
    ----------
    line : str
        The record's line in ``database_tuning_record.json``.
    workload : int
        Its workload index (line of ``database_workload.json``).
    relative_error : float
        ``‖tuned − untuned‖₂ / ‖untuned‖₂`` over the buffers that differ most (``inf``: the tuned
        kernel failed to build or run; NaN: not checked, see :func:`check_best_records`).
    """

    line: str
    workload: int
    relative_error: float


def _arguments(func: Any, rng: np.random.Generator) -> list[np.ndarray] | None:
    """Random arrays for a PrimFunc's buffers (small integers: no intrinsic saturates)."""
    arrays = []
    for buffer in func.params:  # TVM 0.27: a PrimFunc's params are its buffers
        dims = getattr(buffer, "shape", None)
        if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
            return None  # symbolic shapes: nothing to allocate
        shape, dtype = [int(d) for d in buffer.shape], str(buffer.dtype)
        if dtype.startswith("float"):
            arrays.append(rng.uniform(-1, 1, shape).astype(dtype))
        elif dtype.startswith(("int", "uint")):
            low, high = (0, 16) if dtype.startswith("uint") else (-8, 8)
            arrays.append(rng.integers(low, high, shape).astype(dtype))
        elif dtype == "bool":
            arrays.append(rng.integers(0, 2, shape).astype(bool))
        else:
            return None
    return arrays


#: Bytes of guard before and after each buffer of a checked kernel, filled with
#: :data:`GUARD_VALUE` (a multiple of 64: the buffers keep TVM's alignment).
GUARD_BYTES = 4096
GUARD_VALUE = 0xA5


class OutOfBoundsWrite(RuntimeError):
    """A kernel wrote past the start or the end of one of its buffers."""


def _guarded(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(allocation, the buffer in it): a copy of ``array`` with guard bytes either side.

    The buffer starts 64-byte aligned (TVM kernels take buffers without a byte offset).
    """
    base = np.full(array.nbytes + 2 * GUARD_BYTES + 64, GUARD_VALUE, np.uint8)
    start = GUARD_BYTES + (-base.ctypes.data) % 64
    buffer = base[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    buffer[...] = array
    return base[start - GUARD_BYTES:start + array.nbytes + GUARD_BYTES], buffer


def _run(mod: tvm.IRModule, target: tvm.target.Target,
         arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Build ``mod`` and call it once on copies of ``arrays``; its buffers after the call.

    Each buffer lies between guard bytes (:data:`GUARD_BYTES`), checked after the call: a
    write past a buffer would go unseen in a buffer of its own, and corrupt its neighbour in a
    model's memory (a tensorized tile stored whole at the end of a buffer that ends inside it).

    Raises
    ------
    OutOfBoundsWrite
        A guard byte changed.
    """
    library = tvm.compile(mod, target=build_target(target))
    guarded = [_guarded(a) for a in arrays]
    library["main"](*(tvm.runtime.from_dlpack(buffer) for _, buffer in guarded))
    for index, (raw, _) in enumerate(guarded):
        if np.any(raw[:GUARD_BYTES] != GUARD_VALUE) or np.any(raw[-GUARD_BYTES:] != GUARD_VALUE):
            raise OutOfBoundsWrite(f"the kernel wrote past buffer {index} "
                                   f"({mod['main'].params[index].name})")
    return [buffer.copy() for _, buffer in guarded]


def relative_error(tuned: list[np.ndarray], untuned: list[np.ndarray]) -> float:
    """Largest ``‖a − b‖₂ / ‖b‖₂`` over the buffers (inputs are equal; outputs may differ).

    Random inputs can leave a kernel's domain (a layer norm's variance input below zero: the
    square root is NaN for those rows). Non-finite values must then be at the same places in
    both buffers, and equal (any NaN matches any NaN, an infinity only one of the same sign):
    else the error is ``inf``. The finite values are compared as usual, so a kernel that sums
    in another order is not rejected for the rounding of its finite results.
    """
    worst = 0.0
    for a, b in zip(tuned, untuned, strict=True):
        a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
        finite = np.isfinite(b)
        if not np.array_equal(np.isfinite(a), finite):
            return math.inf
        if not np.array_equal(a[~finite], b[~finite], equal_nan=True):
            return math.inf
        a, b = a[finite], b[finite]
        diff = float(np.linalg.norm(a - b))
        if diff:
            worst = max(worst, diff / max(float(np.linalg.norm(b)), 1e-30))
    return worst


def _untuned(mod: tvm.IRModule, target: tvm.target.Target,
             seed: int) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """Random inputs for a workload and its buffers after one call as written (None: no run)."""
    arrays = _arguments(mod["main"], np.random.default_rng(seed))
    if arrays is None:
        return None
    try:
        return arrays, _run(mod, target, arrays)
    except Exception as err:  # noqa: BLE001  (nothing to compare with: not a verdict)
        log.warning("kernel as written failed: %s", str(err).strip().splitlines()[-1])
        return None


def _tuned_error(mod: tvm.IRModule, record: Any, target: tvm.target.Target,
                 untuned: tuple[list[np.ndarray], list[np.ndarray]] | None) -> float:
    if untuned is None:
        return 0.0
    arrays, expected = untuned
    try:
        schedule = _tvm.Schedule(mod)
        record.trace.apply_to_schedule(schedule, remove_postproc=False)
        tuned = _run(schedule.mod, target, arrays)
    except Exception as err:  # noqa: BLE001  (ScheduleError, TVMError from LLVM or the call)
        log.warning("tuned kernel of workload failed: %s", str(err).strip().splitlines()[-1])
        return math.inf
    return relative_error(tuned, expected)


def check_record(workload: Any, record: Any, target: tvm.target.Target, seed: int = 0) -> float:
    """Relative error of a record's tuned kernel against its workload as written.

    Returns
    -------
    float
        :func:`relative_error` of every buffer after one call on the same random inputs;
        ``inf`` when the tuned kernel does not build or run; 0.0 when the workload cannot be
        run here (symbolic shapes, opaque dtypes, or the kernel as written fails).
    """
    return _tuned_error(workload.mod, record, target, _untuned(workload.mod, target, seed))


def check_best_records(folder: Path, target: tvm.target.Target, keep: int = 1,
                       max_failures: int = 32) -> list[Rejected]:
    """Check the records a :func:`compile.tuning_db.prune` to ``keep`` per workload would keep.

    For each workload, its records are checked fastest first (:func:`check_record`; the
    kernel as written runs once per workload) until ``keep`` pass; each that fails is
    returned, to be left out of the pruned database, so that what pruning keeps has passed.
    After ``max_failures`` failures of one workload its records not checked yet are returned
    too (``relative_error`` NaN): the workload keeps only records that passed, or none.

    Parameters
    ----------
    folder : Path
        A database folder (plain JSON files).
    target : tvm.target.Target
        The tuning target; it must run on this machine.
    keep : int
        Records to keep per workload (``tuning.keep_per_workload``, at least 1).
    max_failures : int
        Failed records per workload after which the rest are rejected unchecked. A limit of
        time, not of trust: MetaSchedule's search breeds from its fastest candidates, so one
        wrong schedule can fill a workload's records with wrong variants (ppocr_det's
        ConvTranspose on an Intel Xeon, 2026-11-24: 27 of 31 records wrong, the 17 fastest
        among them).
    """
    workloads, by_workload = records_by_workload(folder)
    rejected = []
    for index, entries in sorted(by_workload.items()):
        workload = _tvm.ms.database.Workload.from_json(json.loads(workloads[index]))
        untuned, ran = None, False  # the kernel as written runs at the first record checked
        passed = failed = 0
        for position, (latency, _, line) in enumerate(entries):
            if passed >= keep or not math.isfinite(latency):
                break
            if failed >= max_failures:
                unchecked = [Rejected(rest, index, math.nan) for _, _, rest in entries[position:]]
                rejected += unchecked
                log.warning("tuning database %s: %d records of workload %d failed the check; its "
                            "%d slower records are left out unchecked", folder, failed, index,
                            len(unchecked))
                break
            try:
                record = _tvm.ms.database.TuningRecord.from_json(json.loads(line)[1], workload)
            except Exception:  # noqa: BLE001  (left to tuning_db.drop_unreplayable)
                continue
            if not ran:
                untuned, ran = _untuned(workload.mod, target, seed=0), True
            error = _tuned_error(workload.mod, record, target, untuned)
            if error <= MAX_RELATIVE_ERROR:
                passed += 1
                continue
            failed += 1
            rejected.append(Rejected(line, index, error))
            log.warning("tuning database %s: the record of workload %d (%.1f us) computes other "
                        "values than the kernel as written (relative error %.3g): rejected",
                        folder, index, latency * 1e6, error)
    return rejected
