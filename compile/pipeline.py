"""The preparation pipeline: graph passes and fusion, per target family.

The same pipeline prepares a model for tuning and for compiling: MetaSchedule's database hits
need structurally identical PrimFuncs (../shared/TVM_0_27.md). Its fingerprint (the pass names
and the TVM version) is recorded in tuning logs and manifests, and a database prepared by
another pipeline is refused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import tvm

from . import _tvm
from .config import Layout, QuantScheme, TargetConfig, TargetKind
from .errors import UnsupportedModelError
from .passes import (
    CapUnroll,
    ClipToMaxMin,
    ConvTransposeToDepthToSpace,
    DecomposeQDQ,
    DumpIR,
    FoldConstantElementwise,
    FoldConstantOperands,
    FoldConstantTransposes,
    LowerQDQToInteger,
    PackPointwiseNHWC,
    PropagateDequantize,
    ScalarConstantOperands,
)

relax = _tvm.relax


def family(target: TargetConfig) -> str:
    """Return the pipeline family of a target: ``"cpu"`` (llvm) or ``"gpu"`` (cuda)."""
    return "gpu" if target.kind == TargetKind.cuda else "cpu"


def unroll_cap(target: TargetConfig) -> int | None:
    """The explicit-unrolling cap kernels are built with (``target.max_unroll_steps``, CPU only).

    Applied after tuned schedules (:func:`post_tuning_passes`) and to the candidates the tuning
    job times, so tuning records time the kernels that ship. None: unrolling as tuned.
    """
    return target.max_unroll_steps if family(target) == "cpu" else None


@functools.cache
def code_sha256() -> str:
    """sha256 of the ``compile`` package's Python sources (16 hex digits).

    Recorded in each artifact's manifest (``pipeline.code_sha256``): the bench job rebuilds an
    artifact that other code built. The pipeline's fingerprint (pass names) does not change
    when a pass's code does, so that tuning databases outlive such changes; an artifact should
    not (on 2026-11-23 a bench run timed an artifact built by a reverted change).
    """
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Pipeline:
    """A named preparation pipeline made of phases.

    Attributes
    ----------
    name : str
        ``<family>-<quant scheme>[-nhwc]``, e.g. ``"cpu-none"``.
    phases : tuple of (str, tuple of tvm.transform.Pass)
        Named phases, run in order; the kernel count is taken after each.
    dump_dir : Path or None
        Where :class:`~compile.passes.DumpIR` writes the IR after each phase.
    """

    name: str
    phases: tuple
    dump_dir: Path | None = None

    @property
    def pass_names(self) -> list[str]:
        """Names of the passes in order (``Pass.info.name``), empty placeholders left out."""
        return [p.info.name for _, passes in self.phases for p in passes
                if p.info.name != "sequential"]

    @property
    def integer_ops(self) -> list[str]:
        """Ops LowerQDQToInteger rewrote in the last run (``conv2d``/``matmul``)."""
        return [op for _, passes in self.phases for p in passes
                if isinstance(p, LowerQDQToInteger) for op in p.rewritten]

    def _packers(self) -> list:
        """The passes that pack 1x1 convolutions: LowerQDQToInteger, PackPointwiseNHWC."""
        return [p for _, phase in self.phases for p in phase
                if isinstance(p, LowerQDQToInteger | PackPointwiseNHWC)]

    @property
    def packed_ops(self) -> tuple[int, int]:
        """(packed, left) 1x1 convolutions of the last run (NCHW or NHWC packing).

        Packed: on the target's x86 dot intrinsic; left: their weights could saturate
        ``vpmaddubsw`` (targets without VNNI).
        """
        passes = self._packers()
        return (sum(p.packed for p in passes), sum(p.saturating for p in passes))

    @property
    def dot_intrinsic(self) -> str | None:
        """The x86 dot intrinsic(s) the last run packed 1x1 convolutions for (None: none).

        Where the convolutions were packed for several intrinsics (16 and 8 lanes), each with
        its count: ``"channel_dot_16x4_u8i8i32_avx512vnni x30, channel_dot_8x4_u8i8i32_vnni x4"``.
        """
        for packer in self._packers():
            used = getattr(packer, "packed_by", {})
            if len(used) > 1:
                return ", ".join(f"{name} x{count}" for name, count in used.items())
            if used:
                return next(iter(used))
        return next((p.intrinsic for p in self._packers() if p.intrinsic), None)

    @property
    def fingerprint(self) -> str:
        """sha256 of the pass names, the pipeline name and the TVM version (16 hex digits)."""
        spec = {"name": self.name, "passes": self.pass_names, "tvm": _tvm.TVM_VERSION}
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def run(self, mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, dict]:
        """Run every phase under ``target``.

        Returns
        -------
        mod : tvm.IRModule
            The prepared module: fused PrimFuncs, the tuning tasks.
        kernels : dict of str to int
            PrimFunc count after each phase, by phase name; NHWC pipelines add
            ``layout_transposes``, the activation transposes after the graph phase
            (:func:`count_layout_transposes`).

        Raises
        ------
        UnsupportedModelError
            A TVM pass fails one of its checks on this model (e.g. ``ToMixedPrecision`` on an
            operator it cannot type).
        """
        kernels = {}
        with target:
            DumpIR(self.dump_dir, 0, "imported")(mod)
            for index, (phase, passes) in enumerate(self.phases, start=1):
                if not passes:
                    continue
                try:
                    mod = tvm.transform.Sequential(
                        [*passes, DumpIR(self.dump_dir, index, phase)])(mod)
                except tvm.error.InternalError as err:  # a TVM pass's check failed
                    lines = [ln for ln in str(err).splitlines() if ln.strip()]
                    raise UnsupportedModelError(
                        f"TVM's {phase} passes of the {self.name} pipeline failed on this model "
                        f"({lines[-1] if lines else type(err).__name__}); try another quant "
                        "scheme (e.g. quant=none) or target.layout, or report the model") from None
                kernels[phase] = count_kernels(mod)
                if phase == "graph" and "ConvertLayout" in self.pass_names:
                    kernels["layout_transposes"] = count_layout_transposes(mod)
        return mod, kernels


#: ``ConvertLayout``'s desired layouts for ``target.layout=NHWC``: convolutions channels last;
#: transposed convolutions kept NCHW/IOHW (with transposes around them), the only layouts TVM
#: 0.27's legalization of ``conv2d_transpose`` builds. Without their entry ``ConvertLayout``
#: carried the NHWC input through them, and ppocr_det (FPN head upsampling) failed to build
#: ("TOPI conv2d_transpose does not support input layout other than NCHW").
NHWC_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "OHWI"], "relax.nn.conv2d_transpose": ["NCHW", "IOHW"]}


def graph_passes(quant: QuantScheme, layout: Layout = Layout.NCHW) -> list:
    """Phase 1: graph-level rewrites on Relax operators, before lowering.

    Every pipeline: elementwise operators of constants folded with numpy
    (``compile.passes.FoldConstantElementwise``: the importer's Clip bounds), after the
    ``int8`` rewrites; then transposed convolutions whose stride is their kernel size made 1x1
    convolutions and depth-to-space (``compile.passes.ConvTransposeToDepthToSpace``).
    ``int8``: quantized conv2d/matmul into integer compute (QDQ models;
    per-tensor dequantize first moved past the data movement before them,
    ``compile.passes.PropagateDequantize``; 1x1 convolutions packed for the AVX2 int8 intrinsic
    where the target has AVX2 and the weights cannot saturate it); ``fp16``: float16 compute
    with float32 accumulation (GPU targets), every Clip first made Relax
    ``maximum``/``minimum`` (``ToMixedPrecision`` fails on ``call_tir`` and on ``clip``,
    ``compile.passes.ClipToMaxMin``). ``NHWC``: 2-D convolutions channels last (kernels OHWI),
    the imported Clips first made Relax operators so the layout flows through them
    (``compile.passes.ClipToMaxMin``), and one-element constants that would take an operator
    back to NCHW made scalars (``compile.passes.ScalarConstantOperands``), and the constants'
    transposes that ``ConvertLayout`` writes folded with numpy
    (``compile.passes.FoldConstantTransposes``); with ``int8``, also the remaining
    quantize/dequantize (``compile.passes.DecomposeQDQ``), and the 1x1 convolutions packed
    channels last after the conversion (``compile.passes.PackPointwiseNHWC``), then the
    broadcast constants that hold one value made one-element or dropped
    (``compile.passes.FoldConstantOperands``).
    """
    nhwc, int8 = layout == Layout.NHWC, quant == QuantScheme.int8
    fp16 = quant == QuantScheme.fp16
    empty = tvm.transform.Sequential([])
    before = [relax.transform.FoldConstant(), ClipToMaxMin(prim_bounds=fp16),
              *([DecomposeQDQ()] if int8 else []), relax.transform.DeadCodeElimination()]
    convert = [ScalarConstantOperands(),
               relax.transform.ConvertLayout(NHWC_LAYOUTS), FoldConstantTransposes(),
               *([relax.transform.FoldConstant(), PackPointwiseNHWC(), FoldConstantOperands(),
                  relax.transform.DeadCodeElimination()] if int8 else [])]
    return [
        *([PropagateDequantize(), LowerQDQToInteger(layout_convertible=nhwc)] if int8
          else [empty]),
        FoldConstantElementwise(),  # with numpy, where FoldConstant built a kernel for each
        ConvTransposeToDepthToSpace(),
        *(before if nhwc or fp16 else []),
        relax.transform.DecomposeOpsForInference(),  # BatchNorm etc. into elementwise ops
        relax.transform.CanonicalizeBindings(),
        (relax.transform.ToMixedPrecision(out_dtype="float32") if fp16 else empty),
        *(convert if nhwc else [empty]),
    ]


def preparation_pipeline(target: TargetConfig, quant: QuantScheme = QuantScheme.none,
                         dump_dir: str | Path | None = None) -> Pipeline:
    """Return the preparation pipeline for a target family and quantization scheme.

    Phases 2 and 3 are TVM's ``zero`` pipeline without its implicit database application (the
    compile job applies databases itself, after checking they fit the target).

    Parameters
    ----------
    target : TargetConfig
    quant : QuantScheme
    dump_dir : str or Path, optional
        Write the IR after each phase here (``dump_ir=<dir>``).

    Raises
    ------
    ValueError
        ``target.layout`` is auto: choose it first (``compile.prepare.choose_layout``).
    """
    if target.layout == Layout.auto:
        raise ValueError("target.layout=auto: choose the layout first (compile.prepare)")
    cpu = family(target) == "cpu"
    phases = (
        # Phase 1. Graph rewrites.
        ("graph", tuple(graph_passes(quant, target.layout))),
        # Phase 2. Every operator lowered to its own PrimFunc: the kernel count before fusion.
        ("legalize", (relax.transform.LegalizeOps(),)),
        # Phase 3. Fusion into kernels: these PrimFuncs are the tuning tasks.
        ("fuse", (relax.transform.AnnotateTIROpPattern(), relax.transform.FoldConstant(),
                  relax.transform.FuseOps(), relax.transform.FuseTIR(),
                  relax.transform.DeadCodeElimination())),
        # Phase 4. CPU: mark weight buffers layout-free, so tuned schedules may choose their
        # layout (MetaSchedule's RewriteLayout); post_tuning_passes packs them at compile time.
        ("layout", (relax.transform.AttachAttrLayoutFreeBuffers(),) if cpu else ()),
    )
    name = f"{family(target)}-{quant.name}" + ("-nhwc" if target.layout == Layout.NHWC else "")
    return Pipeline(name, phases, Path(dump_dir) if dump_dir else None)


def post_tuning_passes(target: TargetConfig) -> tvm.transform.Pass:
    """Passes after tuned schedules are applied, before ``tvm.compile``.

    On CPU, weight-layout rewrites chosen by tuned schedules are split into separate PrimFuncs
    and, the weights being constants, evaluated at compile time (TVM's ``static_shape_tuning``
    pipeline with ``cpu_weight_prepack``, without lifting weights into parameters): the artifact
    embeds pre-packed weights and its interface stays the model's. ``target.max_unroll_steps``
    first caps the tuned schedules' explicit unrolling (``compile.passes.CapUnroll``).

    Folding leaves each kernel's packed weights as a tuple of constants read back by index
    (``lv = (c0, c1); lv1 = lv[1]``), which the VM builds and indexes at every run (in the int8
    MobileNetV2, 53 tuples and 177 ``tuple_getitem`` calls per run, more VM instructions than
    kernel calls): ``CanonicalizeBindings`` passes the constants straight to the kernels and
    ``DeadCodeElimination`` drops the tuples.
    """
    return tvm.transform.Sequential(_post_tuning_list(target))


def _post_tuning_list(target: TargetConfig) -> list[tvm.transform.Pass]:
    if family(target) != "cpu":
        return []
    steps = unroll_cap(target)
    cap = [] if steps is None else [CapUnroll(steps)]
    return [*cap, relax.transform.SplitLayoutRewritePreproc(), relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]


def post_tuning_pass_names(target: TargetConfig) -> list[str]:
    """Names of :func:`post_tuning_passes`, in order (recorded in artifact manifests).

    An artifact built by another list (before a pass was added, say) is not the one the current
    code would build: the bench job recompiles it.
    """
    return [p.info.name for p in _post_tuning_list(target)]


def count_kernels(mod: tvm.IRModule) -> int:
    """Return the number of PrimFuncs (kernels) in a module."""
    return sum(1 for _, func in mod.functions.items() if isinstance(func, _tvm.PrimFunc))


def count_layout_transposes(mod: tvm.IRModule) -> int:
    """Return the number of ``permute_dims`` of non-constant tensors in ``main``.

    After ``ConvertLayout`` these are the activations' layout changes: one at each model input
    and output that has the other layout, and two around every operator without a layout rule
    (constants' permutations fold away at compile time and are not counted).
    """
    found = []

    def visit(expr) -> None:
        if (isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name == "relax.permute_dims"
                and not isinstance(expr.args[0], _tvm.RelaxConstant)):
            found.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(found)
