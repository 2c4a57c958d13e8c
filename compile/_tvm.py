"""Every TVM import that moved between releases, in one place (TVM 0.27 spellings).

The rest of the project imports these names from here, so a TVM upgrade touches one file.
See ../shared/TVM_0_27.md for the renames (``tvm.meta_schedule`` → ``tvm.s_tir.meta_schedule``,
``tvm.tir`` → ``tvm.tirx``, ``tvm.contrib.cc`` → ``tvm.support.cc``, ...).
"""

# ruff: noqa: F401
import tvm
import tvm_ffi
from tvm import relax
from tvm.ir.utils import derived_object  # Python subclasses of MetaSchedule's Py* classes
from tvm.relax.frontend.onnx import from_onnx
from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map as onnx_convert_map
from tvm.s_tir import SBlockRealize, Schedule, dlight
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.analysis import estimate_tir_flops
from tvm.support import cc, nvcc
from tvm.target import Target
from tvm.target.codegen import llvm_get_cpu_features, llvm_get_system_cpu, llvm_is_valid_cpu
from tvm.tirx import PrimFunc

structural_hash = tvm_ffi.structural_hash
structural_equal = tvm_ffi.structural_equal
register_global_func = tvm_ffi.register_global_func
get_global_func = tvm_ffi.get_global_func

TVM_VERSION = tvm.__version__
TVM_FFI_VERSION = tvm_ffi.__version__

# Relax types: 0.27 calls struct info "ty" (var.ty, func.ret_ty) with these classes.
TensorType = relax.TensorType
TupleType = relax.TupleType
# Relax constants: relax.const(...) makes tvm.ir.GenericConst, a subclass of this.
RelaxConstant = tvm.ir.expr.Constant
# Relax PrimValue arguments (R.prim_value(0)): 0.27 has no relax.PrimValue, they are these.
PrimImm = (tvm.ir.prim.expr.IntImm, tvm.ir.prim.expr.FloatImm)


#: Tensor-intrinsic modules per target family (tvm.s_tir.tensor_intrin.<module>).
_INTRINSICS = {"x86_64": "x86", "aarch64": "arm_cpu", "cuda": "cuda"}


def register_tensor_intrinsics(family: str) -> None:
    """Register the tensor intrinsics of one target family only.

    MetaSchedule's ``TuneContext`` imports ``tvm.s_tir.tensor_intrin``, whose ``__init__``
    registers every backend's intrinsics by parsing TVMScript (26-58 s on 2 cores, 20-42 s of it
    CUDA's). With the package already in ``sys.modules`` (created from its spec without running
    ``__init__``), that import is free, and only ``family``'s module registers its intrinsics.

    Parameters
    ----------
    family : {"x86_64", "aarch64", "cuda"}
    """
    import importlib
    import importlib.util
    import sys

    package = "tvm.s_tir.tensor_intrin"
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        sys.modules["tvm.s_tir"].tensor_intrin = module
    importlib.import_module(f"{package}.{_INTRINSICS[family]}")
