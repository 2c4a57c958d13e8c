"""The stages every job shares: fetch → import → real input → preparation pipeline.

The compile, tune and bench jobs all start here, so a model is prepared identically for tuning
and for deployment (MetaSchedule's database hits need structurally identical PrimFuncs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm

from . import _tvm
from .config import ModelConfig, PathsConfig, QuantScheme, TargetConfig
from .errors import TuningDatabaseError
from .importer import ImportedModel, import_model
from .pipeline import Pipeline, preparation_pipeline
from .samples import Sample, make_sample
from .targets import exported_target, resolve_target
from .tuning_db import AppliedDatabase, DatabaseKey, apply_database, mismatch, read_provenance
from .zoo import fetch_model

log = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """A model imported and run through the preparation pipeline for one target.

    Attributes
    ----------
    mod : tvm.IRModule
        Fused module: its PrimFuncs are the kernels (and the tuning tasks).
    kernels : dict of str to int
        PrimFunc count after each pipeline phase (``legalize``: before fusion, ``fuse``: after).
    metrics : dict of str to float
        ``fetch_s``, ``import_s``, ``passes_s`` (seconds).
    """

    target: tvm.target.Target
    target_json: dict
    imported: ImportedModel
    sample: Sample
    pipeline: Pipeline
    mod: tvm.IRModule
    kernels: dict[str, int]
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def database_key(self) -> DatabaseKey:
        """What a tuning database for this model and target must have been tuned for."""
        return DatabaseKey(self.imported.onnx_sha256, self.pipeline.fingerprint,
                           self.target_json, _tvm.TVM_VERSION)


def prepare_model(model: ModelConfig, target_cfg: TargetConfig, quant: QuantScheme,
                  paths: PathsConfig, dump_ir: str | None = None) -> PreparedModel:
    """Fetch, import and prepare a model for a target.

    Raises
    ------
    PipelineError
        From the stages: config, fetch, unsupported model, target.
    """
    target = resolve_target(target_cfg)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    onnx_path = fetch_model(model, paths.cache_dir)
    metrics["fetch_s"] = time.perf_counter() - start
    imported = import_model(onnx_path, model)
    metrics["import_s"] = imported.import_s
    sample = make_sample(model, imported.inputs)
    pipeline = preparation_pipeline(target_cfg, quant, dump_ir)
    start = time.perf_counter()
    mod, kernels = pipeline.run(imported.mod, target)
    metrics["passes_s"] = time.perf_counter() - start
    metrics["kernels_before_fusion"] = kernels["legalize"]
    metrics["kernels_after_fusion"] = kernels["fuse"]
    log.info("%s: %d kernels before fusion, %d after", model.name, kernels["legalize"],
             kernels["fuse"])
    return PreparedModel(target, exported_target(target), imported, sample, pipeline, mod,
                         kernels, metrics)


def database_folder(paths: PathsConfig, model: str, target: str,
                    explicit: str | None = None) -> Path:
    """The tuning database folder: ``tuning.database`` or ``tune_logs/<model>/<target>``."""
    return Path(explicit) if explicit else Path(paths.tune_logs_dir) / model / target


def find_database(prepared: PreparedModel, folder: Path,
                  explicit: bool) -> tuple[AppliedDatabase | None, list[str]]:
    """Apply the tuning database in ``folder`` if it was tuned for this model and target.

    Parameters
    ----------
    prepared : PreparedModel
    folder : Path
    explicit : bool
        The user named the folder (``tuning.database=...``): a mismatch is an error. A folder
        found by convention that does not match is skipped with a warning.

    Returns
    -------
    applied : AppliedDatabase or None
    warnings : list of str

    Raises
    ------
    TuningDatabaseError
        An explicitly named database is missing or was tuned for something else.
    """
    provenance = read_provenance(folder)
    if provenance is None:
        if explicit:
            raise TuningDatabaseError(f"tuning.database={folder} has no provenance.json; "
                                      "it is not a database written by python -m compile.tune")
        return None, []
    problem = mismatch(provenance, prepared.database_key)
    if problem:
        message = f"the tuning database in {folder} does not fit this job: {problem}"
        if explicit:
            raise TuningDatabaseError(message + "; tune this model and target to make one")
        return None, [message + "; compiled without it"]
    return apply_database(prepared.mod, prepared.target, folder), []


def tuning_section(applied: AppliedDatabase | None, total_tasks: int,
                   root: Path) -> dict[str, Any]:
    """The manifest's ``tuning`` section."""
    if applied is None:
        return {"database": None, "database_sha256": "untuned", "tasks_total": total_tasks,
                "tasks_tuned": 0}
    try:
        shown = str(applied.folder.resolve().relative_to(root.resolve()))
    except ValueError:
        shown = str(applied.folder)
    return {"database": shown, "database_sha256": applied.sha256,
            "tune_run_id": applied.tune_run_id, "tasks_total": applied.tasks_total,
            "tasks_tuned": applied.tasks_tuned, "untuned_tasks": applied.untuned_tasks}
