"""Tuning databases on disk: MetaSchedule's JSON files plus a provenance file.

``tune_logs/<model>/<target>/`` holds ``database_workload.json`` (one line per workload),
``database_tuning_record.json`` (one line per measured candidate, ``[workload_index, [trace,
run_secs, target, args_info]]``, appended as measured) and ``provenance.json``. A database is
used only for the model bytes, preparation pipeline, target and TVM version it was tuned for
(MetaSchedule applies records to any target without checking, ../shared/TVM_0_27.md).

The repository keeps gzip copies (``*.json.gz``, 10-15x smaller: each workload line is base64 of
indented JSON); :func:`ensure_plain` unpacks them where MetaSchedule needs plain files, and
:func:`pack` writes them after a tuning run.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tvm

from . import _tvm
from .artifact import write_json_atomic
from .errors import TuningDatabaseError
from .targets import same_target_but_cpu

log = logging.getLogger(__name__)

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
PROVENANCE_FILE = "provenance.json"
PROVENANCE_SCHEMA = 1

#: Provenance fields that must equal the job's for the database to be used. A provenance
#: written before 2026-11-23 has no ``graph_sha256``: its ``onnx_sha256`` is compared instead.
MATCH_FIELDS = ("graph_sha256", "pipeline_fingerprint", "target", "tvm_version")


@dataclass(frozen=True)
class DatabaseKey:
    """What a database was tuned for; two keys must be equal to share records.

    ``graph_sha256`` (:func:`compile.importer.graph_sha256`: the model without its weights'
    values) identifies the model; ``onnx_sha256`` (its bytes) is recorded for reference.
    """

    onnx_sha256: str
    pipeline_fingerprint: str
    target: dict
    tvm_version: str
    graph_sha256: str

    def as_dict(self) -> dict[str, Any]:
        """The fields as stored in ``provenance.json``."""
        return {"onnx_sha256": self.onnx_sha256, "graph_sha256": self.graph_sha256,
                "pipeline_fingerprint": self.pipeline_fingerprint, "target": self.target,
                "tvm_version": self.tvm_version}


def _describe_difference(field: str, have: Any, want: Any) -> str:
    if field == "target" and isinstance(have, dict) and isinstance(want, dict):
        keys = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
        diff = ", ".join(f"{k}: {have.get(k)!r} vs {want.get(k)!r}" for k in keys)
        return f"target differs ({diff})"
    names = {"onnx_sha256": "model bytes (ONNX sha256)",
             "graph_sha256": "model graph (ONNX sha256 without weight values)",
             "pipeline_fingerprint": "preparation pipeline", "tvm_version": "TVM version"}
    return f"{names[field]} differs ({str(have)[:16]} vs {str(want)[:16]})"


def mismatch(provenance: dict[str, Any], key: DatabaseKey) -> str | None:
    """Return what differs between a database's provenance and a job, or None if it matches."""
    wanted = key.as_dict()
    fields = [f if f != "graph_sha256" or "graph_sha256" in provenance else "onnx_sha256"
              for f in MATCH_FIELDS]
    problems = [_describe_difference(f, provenance.get(f), wanted[f])
                for f in fields if provenance.get(f) != wanted[f]]
    return "; ".join(problems) or None


def tuned_on_other_cpu(provenance: dict[str, Any], key: DatabaseKey) -> bool:
    """Whether a database fits a job but for its target's ``mcpu`` (tuned on another CPU)."""
    have = provenance.get("target")
    if not isinstance(have, dict):
        return False
    return (same_target_but_cpu(have, key.target)
            and mismatch(provenance, replace(key, target=have)) is None)


def read_provenance(folder: Path) -> dict[str, Any] | None:
    """Return a database folder's provenance, or None if the folder has none.

    Raises
    ------
    TuningDatabaseError
        The provenance file is not valid JSON.
    """
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise TuningDatabaseError(f"{path} is not valid JSON ({err}); restore it from git or "
                                  "delete the folder to tune afresh") from None


def write_provenance(folder: Path, provenance: dict[str, Any]) -> None:
    """Write ``provenance.json`` atomically."""
    write_json_atomic(folder / PROVENANCE_FILE, provenance)


def ensure_plain(folder: Path) -> None:
    """Unpack ``*.json.gz`` database files that are newer than (or lack) their plain copy."""
    for name in (WORKLOAD_FILE, RECORD_FILE):
        packed, plain = folder / f"{name}.gz", folder / name
        if packed.is_file() and (not plain.is_file()
                                 or packed.stat().st_mtime > plain.stat().st_mtime):
            with gzip.open(packed, "rb") as handle:
                data = handle.read()
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, plain)


def pack(folder: Path) -> None:
    """Write gzip copies of the database files (the form the repository keeps)."""
    for name in (WORKLOAD_FILE, RECORD_FILE):
        plain = folder / name
        if not plain.is_file():
            continue
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.gz.", suffix=".tmp")
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
            out.write(plain.read_bytes())
        os.replace(tmp, folder / f"{name}.gz")


def _valid_line(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def _rewrite_lines(path: Path, lines: list[str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.writelines(line + "\n" for line in lines)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def repair(folder: Path) -> list[str]:
    """Drop unreadable lines (e.g. a last line cut short by a killed job) from a database.

    Every complete record is kept. A workload line can only be dropped at the end of its file
    (records refer to workloads by line number); records pointing past the last workload are
    dropped too.

    Returns
    -------
    list of str
        One warning per dropped line, with its file and line number.

    Raises
    ------
    TuningDatabaseError
        A workload line in the middle of its file is unreadable.
    """
    ensure_plain(folder)
    warnings: list[str] = []
    workload_path, record_path = folder / WORKLOAD_FILE, folder / RECORD_FILE
    workloads: list[str] = []
    if workload_path.is_file():
        raw = workload_path.read_text().splitlines()
        valid = [_valid_line(line) for line in raw]
        if not all(valid):
            first_bad = valid.index(False)
            if not all(not v for v in valid[first_bad:]) and any(valid[first_bad:]):
                raise TuningDatabaseError(
                    f"{workload_path} line {first_bad + 1} is unreadable and later lines depend "
                    "on it; restore the file from git or MLflow, or delete the folder")
            warnings += [f"{workload_path.name} line {i + 1}: unreadable, dropped"
                         for i in range(first_bad, len(raw))]
            _rewrite_lines(workload_path, raw[:first_bad])
            raw = raw[:first_bad]
        workloads = raw
    if record_path.is_file():
        raw = record_path.read_text().splitlines()
        kept = []
        for number, line in enumerate(raw, start=1):
            if not line.strip():
                continue
            if not _valid_line(line):
                warnings.append(f"{record_path.name} line {number}: unreadable, dropped")
                continue
            if json.loads(line)[0] >= len(workloads):
                warnings.append(f"{record_path.name} line {number}: refers to a missing "
                                "workload, dropped")
                continue
            kept.append(line)
        if len(kept) != len(raw):
            _rewrite_lines(record_path, kept)
    for warning in warnings:
        log.warning("tuning database %s: %s", folder, warning)
    return warnings


def record_latency_s(line: str) -> float:
    """Mean measured time of a record line in seconds (``inf`` for failed candidates)."""
    run_secs = json.loads(line)[1][1]
    if not run_secs:
        return math.inf
    mean = sum(float(s) for s in run_secs) / len(run_secs)
    return math.inf if mean >= 1e9 else mean  # MetaSchedule stores 1e10 for failures


def prune(folder: Path, keep: int = 1, rejected: frozenset[str] = frozenset(),
          workloads: frozenset[str] | None = None) -> tuple[int, int]:
    """Keep only the ``keep`` fastest records per workload (the committed form of a database).

    Parameters
    ----------
    folder : Path
    keep : int
        Records kept per workload (0: all).
    rejected : set of str
        Record lines left out whatever their time (kernels that compute wrong values,
        :func:`compile.record_check.check_best_records`).
    workloads : set of str, optional
        Keep only these workloads (:func:`workload_key`); None: every workload with records.

    Returns
    -------
    (before, after) : tuple of int
        Number of records before and after.
    """
    lines, by_workload = records_by_workload(folder)
    if not (folder / RECORD_FILE).is_file():
        return 0, 0
    used = sorted(w for w in by_workload
                  if workloads is None or line_workload_key(lines[w]) in workloads)
    remap = {old: new for new, old in enumerate(used)}
    kept = []
    for old in used:
        best = [r for r in by_workload[old]  # fastest first
                if math.isfinite(r[0]) and r[2] not in rejected][:keep or None]
        for _, order, line in best:
            data = json.loads(line)
            data[0] = remap[old]
            kept.append((order, json.dumps(data, separators=(",", ":"))))
    _rewrite_lines(folder / WORKLOAD_FILE, [lines[old] for old in used])
    _rewrite_lines(folder / RECORD_FILE, [line for _, line in sorted(kept)])
    return sum(len(entries) for entries in by_workload.values()), len(kept)


def records_by_workload(folder: Path) -> tuple[list[str], dict[int, list[tuple[float, int, str]]]]:
    """A database's workload lines, and its record lines grouped by workload, fastest first.

    Returns
    -------
    workloads : list of str
        Lines of ``database_workload.json`` (empty when there are no records).
    by_workload : dict of int to list of (float, int, str)
        Per workload index: ``(mean time in s or inf, line index, line)`` of its records,
        sorted by time, then file order.
    """
    ensure_plain(folder)
    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        return [], {}
    records = [line for line in record_path.read_text().splitlines() if line.strip()]
    by_workload: dict[int, list[tuple[float, int, str]]] = {}
    for order, line in enumerate(records):
        entry = (record_latency_s(line), order, line)
        by_workload.setdefault(json.loads(line)[0], []).append(entry)
    for entries in by_workload.values():
        entries.sort()
    return (folder / WORKLOAD_FILE).read_text().splitlines(), by_workload


def workload_key(structural_hash: int) -> str:
    """A workload's key in the provenance's ``tasks``: its structural hash as 16 hex digits.

    Parameters
    ----------
    structural_hash : int
        ``tvm.ir.structural_hash`` of the workload's IRModule (signed or unsigned 64-bit), or the
        decimal hash that ``database_workload.json`` stores for it.
    """
    return f"{structural_hash & 0xFFFFFFFFFFFFFFFF:016x}"


def line_workload_key(line: str) -> str:
    """:func:`workload_key` of a line of ``database_workload.json`` (``[hash, IRModule]``)."""
    return workload_key(int(json.loads(line)[0]))


def fastest_by_workload(folder: Path) -> dict[str, float]:
    """Each workload's fastest measured record in a database, seconds.

    Returns
    -------
    dict of str to float
        By workload hash (16 hex digits of the workload's structural hash, as in the
        provenance's ``tasks``): the mean run time of its fastest record with a finite time.
    """
    workloads, by_workload = records_by_workload(folder)
    fastest = {}
    for index, entries in by_workload.items():
        if math.isfinite(entries[0][0]):
            fastest[line_workload_key(workloads[index])] = entries[0][0]
    return fastest


def files_sha256(folder: Path) -> str:
    """sha256 over the two database files (the database's identity in manifests)."""
    ensure_plain(folder)
    digest = hashlib.sha256()
    for name in (WORKLOAD_FILE, RECORD_FILE):
        path = folder / name
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def count_records(folder: Path) -> int:
    """Number of tuning records in a database folder."""
    ensure_plain(folder)
    path = folder / RECORD_FILE
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def open_database(folder: Path, read_only: bool = False) -> Any:
    """Open (creating if missing) MetaSchedule's JSON database in ``folder``, after :func:`repair`.

    When TVM refuses the files, records whose schedule does not apply to their workload are
    dropped (:func:`drop_unreplayable`) and the files are read once more.

    ``read_only``: for another database that records are only taken from (another model's, or
    another CPU's): no repair, nothing dropped, nothing created; its packed files are still
    unpacked (:func:`ensure_plain`). Do not commit to it.

    Raises
    ------
    TuningDatabaseError
        TVM cannot parse the files (``read_only``: or they are missing).
    """
    from . import intrinsics  # noqa: F401 (registers the tensor intrinsics records may name)

    if read_only:
        if not folder.is_dir():
            raise TuningDatabaseError(f"no tuning database in {folder}")
        ensure_plain(folder)
        return _json_database(folder, allow_missing=False)
    folder.mkdir(parents=True, exist_ok=True)
    repair(folder)
    try:
        return _json_database(folder)
    except TuningDatabaseError:
        if not drop_unreplayable(folder):
            raise
    return _json_database(folder)


def _json_database(folder: Path, allow_missing: bool = True) -> Any:
    try:
        return _tvm.ms.database.JSONDatabase(
            str(folder / WORKLOAD_FILE), str(folder / RECORD_FILE), allow_missing=allow_missing,
            module_equality="structural")
    except Exception as err:  # TVMError from the JSON loader
        raise TuningDatabaseError(f"TVM cannot read the tuning database in {folder}: "
                                  f"{str(err).strip().splitlines()[-1]}") from None


def replayed(trace: Any, mod: tvm.IRModule) -> tvm.IRModule | None:
    """The module scheduled by a trace, or None where the trace does not apply to it.

    Workloads match by structural equality, which ignores block names; traces find blocks by
    name, so a record of a structurally equal kernel may not apply.
    """
    schedule = _tvm.Schedule(mod)
    try:
        trace.apply_to_schedule(schedule, remove_postproc=False)
    except Exception:  # noqa: BLE001  (ScheduleError and TVMError)
        return None
    return schedule.mod


def drop_unreplayable(folder: Path) -> list[str]:
    """Drop records whose trace does not apply to the workload they are stored under.

    A trace that names a tensor intrinsic this process has not registered is no reason: then
    nothing is dropped and TuningDatabaseError is raised (on 2026-11-23 a script that opened
    the mobilenet_v2 int8 database without :mod:`compile.intrinsics` dropped 48 of its 90
    records from the unpacked files; :func:`open_database` now registers them first).

    TVM's JSON loader replays every record and refuses the whole database for one failure.
    Before this project checked shared records (:func:`import_shared_records`), a record
    copied from another model's database could name blocks this model's kernel calls
    differently.

    Returns
    -------
    list of str
        One warning per dropped record, with its line number.

    Raises
    ------
    TuningDatabaseError
        A record names a tensor intrinsic that is not registered in this process.
    """
    workload_path, record_path = folder / WORKLOAD_FILE, folder / RECORD_FILE
    if not record_path.is_file():
        return []
    workloads = workload_path.read_text().splitlines() if workload_path.is_file() else []
    parsed: dict[int, Any] = {}
    kept, warnings = [], []
    for number, line in enumerate(record_path.read_text().splitlines(), start=1):
        data = json.loads(line)
        index = data[0]
        if index not in parsed:
            parsed[index] = _tvm.ms.database.Workload.from_json(json.loads(workloads[index]))
        try:
            _tvm.ms.database.TuningRecord.from_json(data[1], parsed[index])
        except Exception as err:  # noqa: BLE001  (the trace names blocks the workload lacks)
            if "is not registered" in str(err):  # the process lacks it; the record is fine
                raise TuningDatabaseError(
                    f"{record_path} line {number}: {str(err).strip().splitlines()[-1]} in this "
                    "process; nothing was dropped (register that tensor intrinsic before "
                    "opening the database; this project's are registered by open_database)"
                ) from None
            warnings.append(f"{record_path.name} line {number}: its schedule does not apply "
                            f"to workload {index}, dropped")
            continue
        kept.append(line)
    if warnings:
        _rewrite_lines(record_path, kept)
    for warning in warnings:
        log.warning("tuning database %s: %s", folder, warning)
    return warnings


@dataclass
class AppliedDatabase:
    """Result of applying a database to a prepared module."""

    mod: tvm.IRModule
    folder: Path | None
    sha256: str
    tasks_total: int
    tasks_tuned: int
    untuned_tasks: list[str]
    tune_run_id: str | None


def apply_database(mod: tvm.IRModule, target: tvm.target.Target, folder: Path) -> AppliedDatabase:
    """Replace every PrimFunc that has a tuning record by its best schedule.

    Parameters
    ----------
    mod : tvm.IRModule
        The prepared (fused) module.
    target : tvm.target.Target
    folder : Path
        A database folder whose provenance was checked against the job.
    """
    database = open_database(folder)
    with target, database:
        tuned = _tvm.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    names = [gv.name_hint for gv, f in tuned.functions.items() if isinstance(f, _tvm.PrimFunc)]
    untuned = sorted(gv.name_hint for gv, f in tuned.functions.items()
                     if isinstance(f, _tvm.PrimFunc)
                     and not bool(f.attrs.get("tirx.is_scheduled", False) if f.attrs else False))
    provenance = read_provenance(folder) or {}
    runs = provenance.get("runs") or [{}]
    return AppliedDatabase(tuned, folder, files_sha256(folder), len(names),
                           len(names) - len(untuned), untuned, runs[-1].get("mlflow_run_id"))


def records_to_take(database: Any, source: Any, tasks: list[Any],
                    top_k: int) -> list[tuple[Any, list[tuple[Any, tvm.IRModule]]]]:
    """The records another database offers for the tasks this one has no record of.

    For each task whose kernel (workload) has no record in ``database`` and has some in
    ``source``: its ``top_k`` fastest records there whose trace applies to the task's kernel
    (:func:`replayed`; workloads match by structural equality, traces find blocks by name), each
    with the kernel it schedules. Tasks with no such record are left out.

    Returns
    -------
    list of (ExtractedTask, list of (TuningRecord, IRModule))
    """
    taken = []
    for task in tasks:
        mod = task.dispatched[0]
        if not source.has_workload(mod):
            continue
        if database.has_workload(mod) and database.get_top_k(database.commit_workload(mod), 1):
            continue
        records = [(record, scheduled) for record in
                   source.get_top_k(source.commit_workload(mod), top_k)
                   if (scheduled := replayed(record.trace, mod)) is not None]
        if records:
            taken.append((task, records))
    return taken


def import_shared_records(database: Any, tasks: list[Any], folder: Path, tune_logs: Path,
                          target: dict, top_k: int = 1,
                          parallel_rows: bool | None = None) -> dict[str, int]:
    """Copy the best records of workloads other models share, from their databases.

    Databases under ``tune_logs`` tuned for the same target dict and TVM version are searched
    for each task's workload (structural equality, so the kernel, not the model, must match).
    A record is copied only if its trace applies to this task's module
    (:func:`records_to_take`): structural equality ignores block names (``lv338_red`` in one
    model, ``lv404_red`` in another), the trace finds blocks by name, and TVM refuses a whole
    database with one record that fails. Tasks with a record in ``database`` are left as they
    are.

    Parameters
    ----------
    database : ms.database.JSONDatabase
        The job's database (records are committed to it).
    tasks : list of ExtractedTask
    folder : Path
        The job's own database folder (skipped).
    tune_logs : Path
    target : dict
        The job's exported target.
    top_k : int
        Records copied per shared workload.
    parallel_rows : bool, optional
        Only from databases tuned with this ``tuning.parallel_rows`` (absent from a
        provenance: false); None: from any.

    Returns
    -------
    dict of str to int
        Task name -> records copied.
    """
    copied: dict[str, int] = {}
    for provenance_path in sorted(tune_logs.glob(f"**/{PROVENANCE_FILE}")):
        other = provenance_path.parent
        if other.resolve() == folder.resolve():
            continue
        try:
            provenance = json.loads(provenance_path.read_text())
        except json.JSONDecodeError:
            continue
        if provenance.get("target") != target or provenance.get("tvm_version") != _tvm.TVM_VERSION:
            continue
        if parallel_rows is not None and provenance.get("parallel_rows", False) != parallel_rows:
            continue
        try:
            source = open_database(other, read_only=True)
        except TuningDatabaseError as err:  # another model's: not this job's to repair
            log.warning("records not reused from %s: %s", other, err)
            continue
        taken = records_to_take(database, source, tasks, top_k)
        for task, records in taken:
            workload = database.commit_workload(task.dispatched[0])
            for record, _ in records:
                database.commit_tuning_record(_tvm.ms.database.TuningRecord(
                    record.trace, workload, record.run_secs, record.target, record.args_info))
                copied[task.task_name] = copied.get(task.task_name, 0) + 1
        if taken:
            log.info("reused records from %s for %d task(s)", other, len(taken))
    return copied
