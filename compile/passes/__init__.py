"""The project's own passes (Relax, and TIR schedules), one per file, each named after its class."""

from .cap_unroll import CapUnroll
from .clip_to_max_min import ClipToMaxMin
from .conv_transpose_to_depth_to_space import ConvTransposeToDepthToSpace
from .decompose_qdq import DecomposeQDQ
from .dump_ir import DumpIR
from .fold_constant_elementwise import FoldConstantElementwise
from .fold_constant_operands import FoldConstantOperands
from .fold_constant_transposes import FoldConstantTransposes
from .lower_qdq_to_integer import LowerQDQToInteger
from .pack_pointwise_nhwc import PackPointwiseNHWC
from .propagate_dequantize import PropagateDequantize
from .scalar_constant_operands import ScalarConstantOperands

__all__ = ["CapUnroll", "ClipToMaxMin", "ConvTransposeToDepthToSpace", "DecomposeQDQ",
           "DumpIR", "FoldConstantElementwise", "FoldConstantOperands", "FoldConstantTransposes",
           "LowerQDQToInteger", "PackPointwiseNHWC", "PropagateDequantize",
           "ScalarConstantOperands"]
