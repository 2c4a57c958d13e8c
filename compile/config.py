"""Typed configuration of the jobs: dataclass schemas registered in Hydra's ConfigStore.

YAML files under ``conf/`` hold values; these schemas hold types, defaults and cross-field
checks (``__post_init__`` raises :class:`~compile.errors.ConfigError`). A job turns its
``DictConfig`` into these objects once, with :func:`to_job`; nothing below that sees a
``DictConfig``. Closed choices are Enums spelled as TVM, ONNX Runtime and MLflow spell them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent

if not OmegaConf.has_resolver("project_root"):
    OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


class ModelSource(Enum):
    """Where a model's ONNX file comes from."""

    wheel = "wheel"  # an ONNX file inside a PyPI wheel (pip download --no-deps)
    torch_export = "torch_export"  # PyTorch weights inside a PyPI wheel, exported to ONNX
    file = "file"  # a user's own ONNX file (model.path)


class Task(Enum):
    """What the model does; decides the real input and the task answer compared with ORT."""

    image_classification = "image_classification"
    text_detection = "text_detection"
    text_recognition = "text_recognition"
    text_direction = "text_direction"
    none = "none"


class SampleSource(Enum):
    """Where the verification input comes from."""

    photo = "photo"  # a photo shipped in matplotlib's sample data
    rendered_text = "rendered_text"  # text drawn with Pillow in a DejaVu font
    random = "random"  # seeded uniform noise (user models without a task)


class TargetKind(Enum):
    """TVM target kinds the pipeline builds for."""

    llvm = "llvm"
    cuda = "cuda"


class Layout(Enum):
    """Data layout of 2-D convolutions in the compiled model (Relax ``ConvertLayout``).

    The model's inputs and outputs keep their ONNX layout either way; ``NHWC`` transposes
    activations at the model's inputs and outputs, and around operators without an NHWC rule.
    """

    NCHW = "NCHW"  # as imported from ONNX
    NHWC = "NHWC"  # channels last, kernels OHWI (CPU targets)
    # chosen per job (compile.prepare.resolve_layout): NHWC for quant=int8 on CPU, where the
    # packed integer kernels are, unless only NCHW has a tuning database; NCHW otherwise
    auto = "auto"


class CostModel(Enum):
    """MetaSchedule cost models (``tune_relax(cost_model=...)``)."""

    xgb = "xgb"
    random = "random"


class QuantScheme(Enum):
    """Quantization schemes of the compile job."""

    none = "none"
    int8 = "int8"
    fp16 = "fp16"
    bf16 = "bf16"


_SM_ARCH = re.compile(r"^sm_\d{2,3}[a-z]?$")


def _positive_shape(name: str, shape: list[int], key: str) -> None:
    if not shape or any(int(d) <= 0 for d in shape):
        raise ConfigError(f"{key}.{name} must be a list of positive sizes, got {list(shape)}")


@dataclass
class SampleConfig:
    """The real input used to verify a model (see ``compile.samples``)."""

    source: SampleSource = SampleSource.random
    photo: str = "grace_hopper.jpg"  # file name in matplotlib's mpl-data/sample_data
    text: str = "Hello TVM 2026"  # rendered for the OCR models
    seed: int = 0  # for source=random


@dataclass
class ModelConfig:
    """A model of the zoo or a user's ONNX file.

    ``input_shapes`` fixes every input's shape (NCHW for images), e.g. ``{x: [1, 3, 640, 640]}``;
    inputs left out must have static shapes in the ONNX file.
    """

    name: str | None = None  # artifact folder name; a user file defaults to its stem
    source: ModelSource = ModelSource.file
    path: str | None = None  # source=file: the ONNX file
    package: str | None = None  # source=wheel/torch_export: "name==version" on PyPI
    package_sha256: str | None = None  # sha256 of that wheel
    member: str | None = None  # the file inside the wheel
    member_sha256: str | None = None  # sha256 of that file
    exporter: str | None = None  # source=torch_export: the architecture (compile.exporters)
    opset: int = 17  # source=torch_export: ONNX opset of the export
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    input_dtypes: dict[str, str] = field(default_factory=dict)  # default float32
    fold_constants: bool = True  # onnxslim constant/shape folding with the fixed shapes
    task: Task = Task.none
    sample: SampleConfig = field(default_factory=SampleConfig)
    atol: float = 1e-4  # verification: |tvm - ort| <= atol + rtol * |ort|, elementwise
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        if self.source == ModelSource.file:
            if not self.path:
                raise ConfigError("model=file needs model.path=<your.onnx>")
        elif not (self.package and self.member):
            raise ConfigError(f"model {self.name}: source={self.source.name} needs "
                              "model.package and model.member")
        if self.source == ModelSource.torch_export and not self.exporter:
            raise ConfigError(f"model {self.name}: source=torch_export needs model.exporter")
        if self.name is None:
            self.name = Path(self.path or "model").stem
        for name, shape in self.input_shapes.items():
            _positive_shape(name, shape, "model.input_shapes")
        if self.atol < 0 or self.rtol < 0:
            raise ConfigError("model.atol and model.rtol must be >= 0, got "
                              f"{self.atol}, {self.rtol}")


@dataclass
class TargetConfig:
    """A hardware target, as the fields of a TVM target dict.

    ``mcpu: host`` and ``num_cores: null`` mean this machine's CPU (as LLVM names it) and its
    core count, resolved at run time and recorded in the artifact's manifest.
    """

    name: str = MISSING
    kind: TargetKind = TargetKind.llvm
    mcpu: str | None = None
    mtriple: str | None = None
    mattr: list[str] = field(default_factory=list)
    num_cores: int | None = None  # llvm: MetaSchedule's parallelism; null = this machine's
    arch: str | None = None  # cuda: "sm_80", "sm_90"
    max_threads_per_block: int | None = None  # cuda
    max_shared_memory_per_block: int | None = None  # cuda, bytes (dlight's tiling budget)
    cross_compiler: str | None = None  # export_library's compiler, e.g. aarch64-linux-gnu-gcc
    cross_compiler_package: str | None = None  # the Debian package that provides it
    # CPU: cap on the explicit unrolling tuned schedules ask for (compile.passes.CapUnroll;
    # code size), null = as tuned
    max_unroll_steps: int | None = None
    # CPU: layout of 2-D convolutions (NHWC: channels last, float or int8; auto: per job)
    layout: Layout = Layout.NCHW

    def __post_init__(self) -> None:
        if self.layout == Layout.NHWC and self.kind != TargetKind.llvm:
            raise ConfigError(f"target {self.name}: target.layout=NHWC is for CPU (llvm) "
                              "targets; use target.layout=NCHW")
        if self.kind == TargetKind.cuda:
            if not self.arch or not _SM_ARCH.match(self.arch):
                raise ConfigError(f"target {self.name}: kind=cuda needs target.arch like sm_80, "
                                  f"got {self.arch!r}")
        elif self.arch:
            raise ConfigError(f"target {self.name}: target.arch is for kind=cuda only")
        if self.num_cores is not None and self.num_cores < 1:
            raise ConfigError(f"target.num_cores must be >= 1 or null, got {self.num_cores}")
        if self.max_unroll_steps is not None and self.max_unroll_steps < 0:
            raise ConfigError("target.max_unroll_steps must be >= 0 or null, got "
                              f"{self.max_unroll_steps}")

    @property
    def device(self) -> str:
        """Runtime device of the artifact: ``"cuda"`` or ``"cpu"``."""
        return "cuda" if self.kind == TargetKind.cuda else "cpu"


@dataclass
class TuningConfig:
    """MetaSchedule tuning: budget, search and where the database lives."""

    preset: str = "none"
    trials: int = 64  # trials a tuning job adds to the database (max_trials_global)
    trials_per_iter: int = 16  # candidates measured per task per round (num_trials_per_iter)
    population: int = 512  # evolutionary search population (its time per round scales with it)
    max_trials_per_task: int | None = None  # cap per task; null = trials
    max_time_min: float | None = None  # wall-clock cap of a tuning job, minutes
    cost_model: CostModel = CostModel.xgb
    seed: int = 0
    builder_workers: int | None = None  # parallel candidate builds; null = CPU count
    runner_workers: int = 1  # parallel measurements (1 keeps timings clean)
    min_weight: float = 0.0  # skip tuned tasks below this share of the FLOPs and of the time
    # Tune only the kernels the database has no measured record for (new kernels after a pass
    # change), leaving every measured one as it is.
    only_new: bool = False
    patience: int = 64  # a task converged after this many trials without a 1 % gain
    keep_per_workload: int = 1  # records kept per workload after a run (0: keep all)
    check: bool = True  # run each kept record's kernel against the kernel as written (llvm)
    timeout_s: float = 30.0  # per-candidate measurement timeout
    reuse: bool = True  # start from other models' records of identical kernels (same target)
    # A new database for this CPU, next to one tuned on another CPU this one runs, starts
    # from that one's records timed here (compile/warm_start.py).
    warm_start: bool = True
    # llvm targets: after the search, time register-tiled schedules of the depthwise
    # convolutions next to their best records and keep the faster (compile/depthwise_tiles.py).
    depthwise_tiles: bool = True
    # After the run, drop the records of kernels the model no longer has (after a pipeline
    # code change that kept the pass names). Off: the database also serves the model's
    # other variants of the same pipeline (another quant.exclude or input shape).
    drop_stale: bool = False
    database: str | None = None  # null: tune_logs/<model>/<target>
    apply: bool = True  # the compile job applies a matching database
    # llvm targets, more than one thread: measure only schedules whose threads split the
    # output rows, as the kernel before wrote them (compile/row_parallel.py). null: as the
    # database was tuned (false for databases from before this option); for a new one true
    # for float models in NHWC, false otherwise (int8 and NCHW tuned so were slower, README).
    parallel_rows: bool | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"tuning.trials must be >= 1, got {self.trials}")
        if self.trials_per_iter < 1 or self.population < 8:
            raise ConfigError("tuning.trials_per_iter must be >= 1 and tuning.population >= 8, "
                              f"got {self.trials_per_iter} and {self.population}")
        if self.max_trials_per_task is not None and self.max_trials_per_task < 1:
            raise ConfigError("tuning.max_trials_per_task must be >= 1 or null, "
                              f"got {self.max_trials_per_task}")
        if self.max_time_min is not None and self.max_time_min <= 0:
            raise ConfigError(f"tuning.max_time_min must be > 0 or null, got {self.max_time_min}")
        if self.runner_workers < 1 or (self.builder_workers or 1) < 1:
            raise ConfigError("tuning.runner_workers and tuning.builder_workers must be >= 1")
        if self.patience < 1 or self.keep_per_workload < 0 or self.timeout_s <= 0:
            raise ConfigError("tuning.patience must be >= 1, tuning.keep_per_workload >= 0 and "
                              "tuning.timeout_s > 0")
        if not 0.0 <= self.min_weight < 1.0:
            raise ConfigError(f"tuning.min_weight must be in [0, 1), got {self.min_weight}")


class CalibrationMethod(Enum):
    """ONNX Runtime's calibration methods (``onnxruntime.quantization.CalibrationMethod``)."""

    minmax = "MinMax"
    percentile = "Percentile"
    entropy = "Entropy"


class Calibrator(Enum):
    """Who calibrates and inserts QuantizeLinear/DequantizeLinear pairs (QDQ ONNX)."""

    nncf = "nncf"  # OpenVINO's NNCF: min-max ranges plus fast bias correction
    onnxruntime = "onnxruntime"  # onnxruntime.quantization.quantize_static


class DataSource(Enum):
    """Real sample sets for calibration and validation (``compile.datasets``)."""

    auto = "auto"  # photos for image classifiers, text lines/pages for the OCR models
    photos = "photos"  # natural photos shipped in a PyPI wheel, random crops and flips
    text_lines = "text_lines"  # text lines rendered in DejaVu fonts, varied words and sizes
    text_pages = "text_pages"  # several text lines on a page (text detection)
    npz = "npz"  # a user's .npz: one array per model input, samples stacked on axis 0


@dataclass
class SampleSetConfig:
    """A set of real inputs: where they come from and how many.

    ``files`` are members of ``package``'s wheel (photos); ``words`` names a text corpus
    (``zen``: the Zen of Python, ``stdlib``: docstrings of Python's standard library);
    ``path`` is the ``.npz`` of ``source=npz``.
    """

    source: DataSource = DataSource.auto
    samples: int = 64
    seed: int = 0
    package: str | None = None  # "name==version" holding the photos
    package_sha256: str | None = None
    files: list[str] = field(default_factory=list)
    words: str = "zen"
    path: str | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ConfigError(f"quant sample sets need samples >= 1, got {self.samples}")


@dataclass
class QuantConfig:
    """Quantization of the compile job (``quant=none`` keeps float32).

    ``int8``: static post-training quantization by NNCF or ONNX Runtime's calibrator (QDQ),
    weights int8 symmetric per channel, activations uint8 or int8 (or int16: calibrated at 8 bits,
    then stored in 16 bits over ``activation_margin`` times the calibrated range); the Relax
    pass ``LowerQDQToInteger`` then computes quantized convolutions and matmuls in integers.
    ``fp16``/``bf16``: mixed precision for CUDA targets.
    """

    scheme: QuantScheme = QuantScheme.none
    calibrator: Calibrator = Calibrator.nncf
    method: CalibrationMethod = CalibrationMethod.minmax
    percentile: float = 99.999  # method=percentile
    per_channel: bool = True
    activation_type: str = "uint8"  # uint8 (asymmetric), int8 (symmetric) or int16 (16-bit)
    # int16 activations: this many times the calibrated range (null: 4 for int16, else 1)
    activation_margin: float | None = None
    # nearest (the calibrator's) or gptq (compile/weight_rounding.py); null: gptq for int16
    # activations, nearest otherwise
    weight_rounding: str | None = None
    reduce_range: bool = False  # 7-bit weights: exact AVX2 vpmaddubsw (no VNNI) kernels
    model_type: str | None = None  # nncf calibrator: null (CNNs) or transformer (SmoothQuant)
    bias_correction: str = "full"  # nncf calibrator: full | fast | none
    calibration: SampleSetConfig = field(default_factory=SampleSetConfig)
    validation: SampleSetConfig = field(default_factory=SampleSetConfig)
    max_drop: float = 0.02  # largest accepted task-metric drop against float32
    exclude: list[str] = field(default_factory=list)  # ONNX node names kept in float
    keep_float_worst: int = 0  # on a failed gate, keep this many worst layers float and retry
    verify_cosine: float = 0.98  # int8 vs ONNX Runtime running the same QDQ model

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_drop <= 1.0:
            raise ConfigError(f"quant.max_drop must be in [0, 1], got {self.max_drop}")
        if self.activation_type not in ("uint8", "int8", "int16"):
            raise ConfigError("quant.activation_type must be uint8, int8 or int16, got "
                              f"{self.activation_type!r}")
        if self.activation_type == "int16" and self.calibrator != Calibrator.nncf:
            raise ConfigError("quant.activation_type=int16 widens NNCF's calibration (ONNX "
                              "Runtime's calibrator folds ReLU6/Clip into quantizers whose "
                              "clipping a wider range would lose): set quant.calibrator=nncf")
        if self.activation_margin is None:
            self.activation_margin = 4.0 if self.activation_type == "int16" else 1.0
        if self.activation_margin < 1.0 or (self.activation_margin != 1.0
                                            and self.activation_type != "int16"):
            raise ConfigError("quant.activation_margin must be >= 1 and widens 16-bit activations "
                              f"only (quant.activation_type=int16), got {self.activation_margin}")
        if self.weight_rounding is None:
            self.weight_rounding = "gptq" if self.activation_type == "int16" else "nearest"
        if self.weight_rounding not in ("nearest", "gptq"):
            raise ConfigError("quant.weight_rounding must be nearest or gptq, got "
                              f"{self.weight_rounding!r}")
        if self.keep_float_worst < 0:
            raise ConfigError("quant.keep_float_worst must be >= 0")
        if self.model_type not in (None, "transformer"):
            raise ConfigError("quant.model_type must be null or transformer, got "
                              f"{self.model_type!r}")
        if self.bias_correction not in ("full", "fast", "none"):
            raise ConfigError("quant.bias_correction must be full, fast or none, got "
                              f"{self.bias_correction!r}")
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"quant.percentile must be in [90, 100], got {self.percentile}")


@dataclass
class TrackingConfig:
    """MLflow: the embedded SQLite store by default, or a server's URI."""

    enabled: bool = True
    uri: str = MISSING  # e.g. sqlite:///<project>/mlflow.db or http://mlflow.example:5000
    experiment: str = "tvm-deploy"


@dataclass
class PathsConfig:
    """Folders the jobs read and write; relative paths are relative to ``root``."""

    root: str = MISSING
    cache_dir: str = MISSING  # downloaded wheels, exported models, Hydra run folders
    artifacts_dir: str = MISSING
    tune_logs_dir: str = MISSING


@dataclass
class VerifyConfig:
    """Verification against ONNX Runtime and the runner's latency measurement."""

    enabled: bool = True
    bench_runs: int = 20  # timed runner runs for latency_ms_p50 (0 to skip)
    bench_max_s: float = 20.0  # fewer runs (at least 3) when they would take longer than this
    warmup: int = 3

    def __post_init__(self) -> None:
        if self.bench_runs < 0 or self.warmup < 0:
            raise ConfigError("verify.bench_runs and verify.warmup must be >= 0")


@dataclass
class CompileJob:
    """``python -m compile``: import, optimize, build, verify and track one model for one target."""

    model: ModelConfig = MISSING
    target: TargetConfig = MISSING
    tuning: TuningConfig = field(default_factory=TuningConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    threads: int | None = None  # TVM and ORT thread count; null = this machine's cores
    dump_ir: str | None = None  # folder for the IR after each phase (debugging)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1 or null, got {self.threads}")


class Baseline(Enum):
    """Engines the benchmark job compares the compiled artifact with."""

    onnxruntime = "onnxruntime"  # CPU execution provider, all graph optimizations
    openvino = "openvino"  # CPU plugin, inference precision f32 (optional 'baselines' extra)
    untuned = "untuned"  # the same model built by TVM without a tuning database


@dataclass
class BenchConfig:
    """Benchmark settings: same input, same threads, after warm-up, one process."""

    runs: int = 100  # timed runs per engine and thread count (fewer if over max_s)
    warmup: int = 10
    max_s: float = 30.0  # per engine and thread count: cap on timed wall time
    # the timed runs are split into this many rounds, the engines taking turns (order reversed
    # every other round), so drift on a shared machine hits every engine alike
    rounds: int = 5
    threads: list[int] = field(default_factory=list)  # empty: [1, this machine's cores]
    baselines: list[Baseline] = field(default_factory=lambda: [Baseline.onnxruntime,
                                                               Baseline.openvino,
                                                               Baseline.untuned])
    recompile: bool = False  # rebuild the artifact even when a matching one exists

    def __post_init__(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.max_s <= 0 or self.rounds < 1:
            raise ConfigError("bench.runs and bench.rounds must be >= 1, bench.warmup >= 0 and "
                              "bench.max_s > 0")
        if any(t < 1 for t in self.threads):
            raise ConfigError(f"bench.threads must be positive, got {self.threads}")


@dataclass
class BenchJob(CompileJob):
    """``python -m compile.bench``: the compiled artifact against its peers, one run."""

    bench: BenchConfig = field(default_factory=BenchConfig)


def host_threads() -> int:
    """Return the number of CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (the YAML files list them as defaults)."""
    store = ConfigStore.instance()
    store.store(name="compile_schema", node=CompileJob)
    store.store(name="bench_schema", node=BenchJob)
    store.store(group="model", name="model_schema", node=ModelConfig)
    store.store(group="target", name="target_schema", node=TargetConfig)
    store.store(group="tuning", name="tuning_schema", node=TuningConfig)
    store.store(group="quant", name="quant_schema", node=QuantConfig)
    store.store(group="tracking", name="tracking_schema", node=TrackingConfig)
    store.store(group="paths", name="paths_schema", node=PathsConfig)


def to_job(cfg: DictConfig, schema: type) -> Any:
    """Turn a composed config into the job's dataclass, running every ``__post_init__`` check.

    Parameters
    ----------
    cfg : DictConfig
        The composed Hydra config (without its ``hydra`` node, as ``@hydra.main`` passes it).
    schema : type
        The job dataclass, e.g. :class:`CompileJob`.

    Raises
    ------
    ConfigError
        A value has the wrong type, is missing, or fails a cross-field check.
    """
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        if isinstance(err.__cause__, ConfigError):
            raise err.__cause__ from None
        detail = str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise ConfigError(f"invalid config{f' at {key}' if key else ''}: {detail}") from None
