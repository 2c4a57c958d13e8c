"""The stages every job shares: fetch → import → real input → preparation pipeline.

The compile, tune and bench jobs all start here, so a model is prepared identically for tuning
and for deployment (MetaSchedule's database hits need structurally identical PrimFuncs).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import tvm

from runner.manifest import sha256_file

from . import _tvm
from .config import (
    Layout,
    ModelConfig,
    PathsConfig,
    QuantConfig,
    QuantScheme,
    TargetConfig,
    TargetKind,
)
from .datasets import SampleSet, load_samples
from .errors import ConfigError, QuantizationError, TuningDatabaseError
from .importer import ImportedModel, import_model
from .pipeline import Pipeline, preparation_pipeline
from .quantize import QuantizedModel, quantize
from .samples import Sample, make_sample
from .targets import (
    exported_target,
    host_cpu,
    host_runs,
    isa_features,
    resolve_target,
    same_target_but_cpu,
)
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
    quantized: QuantizedModel | None = None
    fp32_onnx: Any = None  # the folded float model that was quantized (int8)
    calibration: SampleSet | None = None

    @property
    def database_key(self) -> DatabaseKey:
        """What a tuning database for this model and target must have been tuned for."""
        return DatabaseKey(self.imported.onnx_sha256, self.pipeline.fingerprint,
                           self.target_json, _tvm.TVM_VERSION, self.imported.graph_sha256)


def check_quant_target(quant: QuantConfig, target_cfg: TargetConfig) -> None:
    """Refuse quantization schemes the target cannot use.

    Raises
    ------
    ConfigError
        fp16/bf16 on a CPU target, or bf16 (TVM 0.27's mixed-precision pass makes float16
        only).
    """
    if quant.scheme in (QuantScheme.fp16, QuantScheme.bf16) and target_cfg.kind != TargetKind.cuda:
        raise ConfigError(f"quant={quant.scheme.name} is for CUDA targets; on CPU it runs "
                          "15-60x slower than float32 (use quant=int8 or quant=none)")
    if quant.scheme == QuantScheme.bf16:
        raise ConfigError("quant=bf16 is not supported: TVM 0.27's ToMixedPrecision converts to "
                          "float16 only; use quant=fp16")


def prepare_model(model: ModelConfig, target_cfg: TargetConfig, quant: QuantConfig,
                  paths: PathsConfig, dump_ir: str | None = None,
                  exclude: list[str] | None = None) -> PreparedModel:
    """Fetch, import (quantizing for ``quant=int8``) and prepare a model for a target.

    Parameters
    ----------
    target_cfg : TargetConfig
        Its ``layout`` is NCHW or NHWC: jobs resolve ``auto`` first (:func:`resolve_layout`,
        which honours ``tuning.database`` and ``tuning.apply``).
    exclude : list of str, optional
        Extra ONNX node names to keep in float (besides ``quant.exclude``).

    Raises
    ------
    PipelineError
        From the stages: config, fetch, unsupported model, calibration data, target.
    ValueError
        ``target_cfg.layout`` is auto.
    """
    if target_cfg.layout == Layout.auto:
        raise ValueError("target.layout=auto: resolve the job's layout first "
                         "(compile.prepare.resolve_layout)")
    check_quant_target(quant, target_cfg)
    target = resolve_target(target_cfg)
    metrics: dict[str, float] = {}
    start = time.perf_counter()
    onnx_path = fetch_model(model, paths.cache_dir)
    metrics["fetch_s"] = time.perf_counter() - start
    quantized: dict[str, Any] = {}
    rewrite = None
    if quant.scheme == QuantScheme.int8:
        onnx_sha256 = sha256_file(onnx_path)

        def rewrite(folded, specs):
            calibration = load_samples(quant.calibration, model, specs, paths.cache_dir)
            quantized["fp32"] = folded
            quantized["calibration"] = calibration
            kept_float = sorted({*quant.exclude, *(exclude or [])})
            quantized["model"] = quantize(folded, onnx_sha256, quant, calibration,
                                          paths.cache_dir, kept_float)
            return quantized["model"].model

    imported = import_model(onnx_path, model, rewrite)
    metrics["import_s"] = imported.import_s
    sample = make_sample(model, imported.inputs)
    pipeline = preparation_pipeline(target_cfg, quant.scheme, dump_ir)
    start = time.perf_counter()
    mod, kernels = pipeline.run(imported.mod, target)
    metrics["passes_s"] = time.perf_counter() - start
    metrics["kernels_before_fusion"] = kernels["legalize"]
    metrics["kernels_after_fusion"] = kernels["fuse"]
    log.info("%s: %d kernels before fusion, %d after", model.name, kernels["legalize"],
             kernels["fuse"])
    if "layout_transposes" in kernels:
        metrics["layout_transposes"] = kernels["layout_transposes"]
        log.info("%s in %s: %d activation transposes (inputs, outputs, and two around each "
                 "operator without an NHWC rule)", model.name, target_cfg.layout.name,
                 kernels["layout_transposes"])
    if quant.scheme == QuantScheme.int8 and not pipeline.integer_ops:
        raise QuantizationError(f"nothing was computed in integers: no quantized Conv/MatMul/Gemm "
                                f"of {model.name} matched LowerQDQToInteger's patterns")
    return PreparedModel(target, exported_target(target), imported, sample, pipeline, mod,
                         kernels, metrics, quantized.get("model"), quantized.get("fp32"),
                         quantized.get("calibration"))


def variant_path(root: str | Path, model: str, target: TargetConfig, quant: QuantScheme) -> Path:
    """``<root>/<model>/<target>``, plus ``/<scheme>`` for quantized and ``/nhwc`` for NHWC ones.

    Raises
    ------
    ValueError
        ``target.layout`` is auto: choose it first (:func:`choose_layout`).
    """
    if target.layout == Layout.auto:
        raise ValueError("target.layout=auto: choose the layout first (compile.prepare)")
    path = Path(root) / model / target.name
    if quant != QuantScheme.none:
        path = path / quant.name
    return path / "nhwc" if target.layout == Layout.NHWC else path


def database_folder(paths: PathsConfig, model: str, target: TargetConfig, quant: QuantScheme,
                    explicit: str | None = None, own_cpu: bool = True) -> Path:
    """The tuning database: ``tuning.database``, else by convention under ``tune_logs``.

    By convention: :func:`variant_path`, except for llvm targets without ``mtriple``, which
    also look in the folders of databases tuned on one CPU, ``<target>-<cpu>`` instead of
    ``<target>`` (``tune_logs/mobilenet_v2/x86_64-znver5/nhwc``):

    * ``target.mcpu: host`` (this machine): the folder for this CPU when there is one; else, of
      the databases under ``<target>`` and ``<target>-<other cpu>`` tuned on a CPU whose code
      this one runs (:func:`compile.targets.host_runs`), the one of the CPU with the most
      instruction sets (``x86_64-znver5`` before ``x86_64``, tuned on a ``znver3``, on an Intel
      Xeon with AVX-512; :func:`adopt_database_cpu` then compiles for that CPU);
    * a named ``target.mcpu``: the first of those folders whose database was tuned for it.

    ``own_cpu=False`` leaves out the folder for this CPU: the database this CPU would adopt
    without one (the tuning job seeds this CPU's with its records, :mod:`compile.warm_start`).
    """
    if explicit:
        return Path(explicit)
    plain = variant_path(paths.tune_logs_dir, model, target, quant)
    if target.kind != TargetKind.llvm or target.mtriple:
        return plain
    own = host_cpu_folder(paths, model, target, quant)
    if own_cpu and own is not None and read_provenance(own) is not None:
        return own
    others = [variant_path(paths.tune_logs_dir, model, replace(target, name=root.name), quant)
              for root in sorted(Path(paths.tune_logs_dir, model).glob(f"{target.name}-*"))]
    if not own_cpu and own is not None:
        others = [folder for folder in others if folder != own]
    tuned_for = {}
    for folder in [plain, *others]:
        if mcpu := _tuned_on(folder):
            tuned_for.setdefault(mcpu, folder)
    if target.mcpu != "host":
        return tuned_for.get(target.mcpu, plain)
    runnable = [(len(isa_features(mcpu)), folder == plain, folder)
                for mcpu, folder in tuned_for.items() if host_runs(mcpu)]
    return max(runnable, key=lambda r: r[:2])[2] if runnable else plain


def host_cpu_folder(paths: PathsConfig, model: str, target: TargetConfig,
                    quant: QuantScheme) -> Path | None:
    """:func:`variant_path` under ``<target>-<this CPU>`` for ``mcpu: host`` llvm targets."""
    if target.kind != TargetKind.llvm or target.mcpu != "host" or target.mtriple:
        return None
    return variant_path(paths.tune_logs_dir, model,
                        replace(target, name=f"{target.name}-{host_cpu()}"), quant)


def choose_layout(model: str, target: TargetConfig, quant: QuantScheme, paths: PathsConfig,
                  database: str | None = None, apply: bool = True) -> tuple[Layout, str]:
    """The convolution layout for ``target.layout: auto``, and why.

    ``quant=int8`` on an llvm target takes NHWC, where its integer kernels are packed
    channels-last (``compile.passes.PackPointwiseNHWC``: 16-bit mobilenet_v2 on an Intel Xeon,
    2 threads, tuned, 2.72 ms in NHWC against 60.5 ms in NCHW, for which no database of that
    variant exists; ppocr_rec 7.3 against 135 ms, 2026-11-24), unless only NCHW has a tuning
    database for it (:func:`database_folder`, ``database`` as ``tuning.database``; none counts
    where ``apply`` is false). Everything else takes the layout whose database uses the most
    of this CPU (``target.mcpu: host``: tuned on this CPU, else on the CPU with the most
    instruction sets this one runs, as :func:`database_folder` ranks them), NCHW, the layout as
    imported, where they tie or neither has one. On an Intel Xeon with AVX-512 (2026-11-24,
    2 threads, p50 against ONNX Runtime's in the same job): float32 mobilenet_v2 7.93 ms in
    NCHW with the Zen 3 database (AVX2 code) against 3.89 ms in NHWC with the Zen 5 one;
    ppocr_rec 14.28 against 8.30 ms (ONNX Runtime 11.42 and 10.71 ms).

    Parameters
    ----------
    model : str
    target : TargetConfig
        Its ``layout`` is not read.
    quant : QuantScheme
    paths : PathsConfig
    database : str, optional
    apply : bool

    Returns
    -------
    layout : Layout
        NCHW or NHWC.
    why : str
        One line for the log: ``target.layout=auto: NHWC (...)``.
    """
    int8 = quant == QuantScheme.int8 and target.kind == TargetKind.llvm
    if int8:
        order = [Layout.NHWC, Layout.NCHW]
    elif target.kind == TargetKind.llvm:
        order = [Layout.NCHW, Layout.NHWC]
    else:
        order = [Layout.NCHW]

    def tuned(layout: Layout) -> Path | None:
        if not apply:
            return None
        folder = database_folder(paths, model, replace(target, layout=layout), quant, database)
        pipeline = str((read_provenance(folder) or {}).get("pipeline", ""))
        nhwc = pipeline.endswith("-nhwc")  # compile.pipeline.preparation_pipeline's name
        return folder if pipeline and nhwc == (layout == Layout.NHWC) else None

    found = [(layout, folder) for layout in order if (folder := tuned(layout))]
    if not int8:  # stable: NCHW first where the databases' CPUs tie
        found.sort(key=lambda entry: _cpu_fit(entry[1], target), reverse=True)
    layout, folder = found[0] if found else (order[0], None)
    if int8:
        why = ("quant=int8: integer kernels packed channels-last" if layout == Layout.NHWC else
               "the only tuning database for quant=int8")
    elif layout == Layout.NCHW:
        why = "as imported"
    else:
        other = dict(found).get(Layout.NCHW)
        why = (f"its tuning database uses more of this CPU: {_tuned_on(folder)} against "
               f"NCHW's {_tuned_on(other)}" if other else "the only tuning database")
    where = "no tuning database"
    if folder:
        shown = folder.resolve()
        shown = shown.relative_to(Path.cwd()) if shown.is_relative_to(Path.cwd()) else shown
        where = f"tuning database {shown}"
    return layout, f"target.layout=auto: {layout.name} ({why}; {where})"


def _tuned_on(folder: Path) -> str:
    """The ``mcpu`` a database was tuned for ("" when its provenance names none)."""
    mcpu = ((read_provenance(folder) or {}).get("target") or {}).get("mcpu")
    return mcpu if isinstance(mcpu, str) else ""


def _cpu_fit(folder: Path, target: TargetConfig) -> tuple[bool, int]:
    """How much of this CPU a database's code uses: (tuned on it, its CPU's instruction sets).

    Only for ``target.mcpu: host`` without ``mtriple``; otherwise every database ties. A
    database for a CPU whose code this one does not run ranks last.
    """
    if target.mcpu != "host" or target.mtriple:
        return False, 0
    mcpu = _tuned_on(folder)
    if not mcpu or not host_runs(mcpu):
        return False, -1
    return mcpu == host_cpu(), len(isa_features(mcpu))


def resolve_layout(job: Any) -> tuple[Any, str | None]:
    """A job whose ``target.layout`` is auto as the layout :func:`choose_layout` chooses.

    Parameters
    ----------
    job : CompileJob or BenchJob

    Returns
    -------
    job : CompileJob or BenchJob
        ``job`` (an explicit layout), or a copy whose ``target.layout`` is NCHW or NHWC.
    note : str or None
        The layout chosen and why, also logged (None where it was explicit).
    """
    if job.target.layout != Layout.auto:
        return job, None
    layout, why = choose_layout(str(job.model.name), job.target, job.quant.scheme, job.paths,
                                job.tuning.database, job.tuning.apply)
    log.info(why)
    return replace(job, target=replace(job.target, layout=layout)), why


def adopt_database_cpu(job: Any) -> tuple[Any, str | None]:
    """Compile for the CPU the job's tuning database was tuned on, when this machine runs its code.

    With ``target.mcpu: host`` (an llvm target for this machine), a database (``tuning.database``
    or the one by convention) whose target differs from this machine's only in ``mcpu``, for a
    CPU whose instruction sets this one has (:func:`compile.targets.host_runs`: a database tuned
    on a ``znver3`` used on a ``znver5``), is applied by compiling for that CPU: its schedules
    are used as tuned and the artifact runs here, without this CPU's newer instructions. Any
    other difference is left to :func:`find_database`, which skips or refuses the database.

    Parameters
    ----------
    job : CompileJob or BenchJob

    Returns
    -------
    job : CompileJob or BenchJob
        ``job``, or a copy whose ``target.mcpu`` is the database's.
    warning : str or None
        What was done, and how to tune for this CPU instead.
    """
    target = job.target
    if (not job.tuning.apply or target.kind != TargetKind.llvm or target.mcpu != "host"
            or target.mtriple):
        return job, None
    folder = database_folder(job.paths, str(job.model.name), target, job.quant.scheme,
                             job.tuning.database)
    tuned_for = (read_provenance(folder) or {}).get("target")
    if not isinstance(tuned_for, dict):
        return job, None
    here = exported_target(resolve_target(target))
    mcpu = tuned_for.get("mcpu")
    if (not same_target_but_cpu(tuned_for, here) or not isinstance(mcpu, str)
            or not host_runs(mcpu)):
        return job, None
    warning = (f"the tuning database in {folder} was tuned on mcpu={mcpu}: compiled for "
               f"{mcpu} (this {host_cpu()} runs its code) to use it; tune on this machine "
               f"(python -m compile.tune) for kernels using all of this CPU's instructions")
    return replace(job, target=replace(target, mcpu=mcpu)), warning


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
