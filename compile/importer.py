"""Import stage: ONNX file → checked, shape-fixed, folded ONNX → Relax IRModule.

1. load and ``onnx.checker``; 2. find operators TVM cannot import, in subgraphs too, all at
once; 3. fix every input's shape; 4. fold constants and shapes with ``onnxslim`` (the importer
rejects Reshape/Pad/Range of computed shapes that folding removes, ../shared/TVM_0_27.md);
5. ``relax.frontend.onnx.from_onnx`` with weights bound as constants.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import helper

from runner import TensorSpec
from runner.manifest import sha256_file

from . import _tvm
from .config import ModelConfig
from .errors import ConfigError, UnsupportedModelError

log = logging.getLogger(__name__)

#: Ops the importer handles outside its converter map (onnx_frontend._construct_nodes).
_DIRECT_OPS = {"If", "Constant"}
_DEFAULT_DOMAINS = {"", "ai.onnx"}


def onnx_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain (``ai.onnx``) opset version, 0 when it declares none."""
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


@dataclass
class ImportedModel:
    """The result of the import stage.

    Attributes
    ----------
    mod : tvm.IRModule
        Relax module; ``main`` takes the inputs in ``inputs`` order.
    onnx_path : Path
        The source ONNX file (the reference for verification).
    onnx_sha256 : str
        sha256 of the ONNX file's bytes.
    opset : int
        The default-domain opset of the source model.
    inputs, outputs : list of TensorSpec
        Fixed shapes and dtypes.
    prepared : onnx.ModelProto
        The checked, shape-fixed (and folded) model that was imported.
    metadata : dict of str to str
        The source model's ``metadata_props``.
    op_counts : dict of str to int
        Operator histogram of the source graph (subgraphs included).
    import_s : float
        Wall time of this stage, seconds.
    graph_sha256 : str
        :func:`graph_sha256` of the source model: what tuning databases are matched on.
    """

    mod: object
    onnx_path: Path
    onnx_sha256: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    prepared: onnx.ModelProto
    metadata: dict[str, str] = field(default_factory=dict)
    op_counts: dict[str, int] = field(default_factory=dict)
    import_s: float = 0.0
    graph_sha256: str = ""


_TENSOR_DATA = ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                "uint64_data", "string_data")


def graph_sha256(model: onnx.ModelProto) -> str:
    """sha256 of an ONNX model without its initializers' values, doc strings and producer.

    What the kernels of a model depend on: operators, attributes, topology, opsets and every
    tensor's name, dtype and shape, but not the weights' values. Tuning databases are matched
    on it, so a database fits a model exported again with weights that differ in their last
    bits (PyTorch's export of mobilenet_v2 on an Intel Xeon against an AMD EPYC, 2026-11-23)
    or retrained with the same architecture.

    Parameters
    ----------
    model : onnx.ModelProto

    Returns
    -------
    str
        64 hex digits.
    """
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.producer_name = bare.producer_version = bare.doc_string = ""
    bare.graph.doc_string = ""
    for tensor in bare.graph.initializer:
        for name in _TENSOR_DATA:
            tensor.ClearField(name)
        tensor.doc_string = ""
    for node in bare.graph.node:
        node.doc_string = ""
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file.

    Raises
    ------
    UnsupportedModelError
        The file is truncated, not ONNX, or fails ``onnx.checker``.
    """
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf DecodeError, onnx's own errors
        raise UnsupportedModelError(f"{path} is not a readable ONNX model "
                                    f"({type(err).__name__}: {err}); re-export it") from None
    if not model.graph.node:
        raise UnsupportedModelError(f"{path} has an empty graph; is it an ONNX model?")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first = str(err).strip().splitlines()[0]
        raise UnsupportedModelError(f"{path} fails onnx.checker: {first}") from None
    return model


def _iter_nodes(graph: onnx.GraphProto, where: str = "main graph"):
    for node in graph.node:
        yield node, where
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _iter_nodes(attr.g, f"{node.op_type} '{node.name}' body")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _iter_nodes(sub, f"{node.op_type} '{node.name}' body")


def op_histogram(model: onnx.ModelProto) -> Counter:
    """Count operators by ``domain::op_type`` (plain ``op_type`` for the default domain)."""
    counts: Counter = Counter()
    for node, _ in _iter_nodes(model.graph):
        key = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        counts[key] += 1
    return counts


def find_unsupported_ops(model: onnx.ModelProto) -> dict[str, dict[str, int]]:
    """Find every operator TVM's ONNX importer cannot convert, in subgraphs too.

    Returns
    -------
    dict
        ``{op: {where: count}}``; empty when everything converts.
    """
    supported = set(_tvm.onnx_convert_map()) | _DIRECT_OPS
    found: dict[str, Counter] = {}
    for node, where in _iter_nodes(model.graph):
        if node.domain in _DEFAULT_DOMAINS and node.op_type in supported:
            continue
        key = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
        found.setdefault(key, Counter())[where] += 1
    return {op: dict(places) for op, places in sorted(found.items())}


def _format_unsupported(found: dict[str, dict[str, int]]) -> str:
    parts = []
    for op, places in found.items():
        total = sum(places.values())
        inner = sum(n for w, n in places.items() if w != "main graph")
        parts.append(f"{op} x{total}" + (f" ({inner} in subgraphs)" if inner else ""))
    return ", ".join(parts)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    dims = []
    for dim in value_info.type.tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    return dims


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Return the real inputs of a graph (initializers listed as inputs are not inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in initializers]


def fixed_input_specs(model: onnx.ModelProto, config: ModelConfig) -> list[TensorSpec]:
    """Give every graph input a fixed shape and dtype.

    Shapes come from ``model.input_shapes`` or, for inputs left out, from the file when static.

    Raises
    ------
    ConfigError
        Names in ``model.input_shapes`` that are not inputs, shapes of the wrong rank, or inputs
        with dynamic dimensions not given a shape (all listed at once, with the fix).
    """
    inputs = graph_inputs(model)
    names = [vi.name for vi in inputs]
    problems = []
    unknown = sorted(set(config.input_shapes) - set(names))
    if unknown:
        problems.append(f"model.input_shapes names {unknown}, the model's inputs are {names}")
    specs = []
    for vi in inputs:
        dims = _dims(vi)
        elem = vi.type.tensor_type.elem_type
        dtype = config.input_dtypes.get(vi.name) or str(helper.tensor_dtype_to_np_dtype(elem))
        if vi.name in config.input_shapes:
            shape = [int(d) for d in config.input_shapes[vi.name]]
            if dims and len(dims) != len(shape):
                problems.append(f"input '{vi.name}' has rank {len(dims)} {dims}, "
                                f"model.input_shapes gives {shape}")
            elif any(isinstance(d, int) and d != s for d, s in zip(dims, shape, strict=True)):
                problems.append(f"input '{vi.name}' is fixed at {dims} in the file, "
                                f"model.input_shapes gives {shape}")
        elif all(isinstance(d, int) for d in dims):
            shape = [int(d) for d in dims]
        else:
            problems.append(f"input '{vi.name}' has dynamic shape {dims}: set "
                            f"'++model.input_shapes={{{vi.name}:[...]}}'")
            continue
        specs.append(TensorSpec(vi.name, tuple(shape), dtype))
    if problems:
        raise ConfigError("; ".join(problems))
    return specs


def fold(model: onnx.ModelProto, specs: list[TensorSpec]) -> onnx.ModelProto:
    """Fold constants and shape computations for fixed input shapes with onnxslim."""
    import onnxslim

    shapes = [f"{s.name}:{','.join(str(d) for d in s.shape)}" for s in specs]
    try:
        return onnxslim.slim(model, input_shapes=shapes)
    except Exception as err:  # onnxslim raises plain exceptions from its passes
        raise UnsupportedModelError(f"constant/shape folding (onnxslim) failed: {err}; "
                                    "try model.fold_constants=false") from None


def _output_specs(mod, model: onnx.ModelProto) -> list[TensorSpec]:
    ret = mod["main"].ret_ty
    types = list(ret.fields) if isinstance(ret, _tvm.TupleType) else [ret]
    names = [o.name for o in model.graph.output]
    specs = []
    for name, ty in zip(names, types, strict=True):
        if not isinstance(ty, _tvm.TensorType) or ty.shape is None:
            raise UnsupportedModelError(f"output '{name}' has no static tensor shape after "
                                        "import; fix the input shapes (model.input_shapes)")
        specs.append(TensorSpec(name, tuple(int(v) for v in ty.shape.values), str(ty.dtype)))
    return specs


Rewrite = Callable[[onnx.ModelProto, list[TensorSpec]], onnx.ModelProto]


def import_model(path: Path, config: ModelConfig, rewrite: Rewrite | None = None) -> ImportedModel:
    """Run the import stage on an ONNX file.

    Parameters
    ----------
    path : Path
        The ONNX file.
    config : ModelConfig
        Input shapes/dtypes and whether to fold constants.
    rewrite : callable, optional
        ``rewrite(folded_model, input_specs) -> model`` applied after folding, before the Relax
        import (quantization inserts its QuantizeLinear/DequantizeLinear pairs here).

    Returns
    -------
    ImportedModel

    Raises
    ------
    UnsupportedModelError
        Unreadable or invalid file; operators TVM cannot import (listed with counts); import
        failures inside TVM.
    ConfigError
        Input shapes missing or inconsistent.
    """
    start = time.perf_counter()
    model = load_onnx(path)
    graph = graph_sha256(model)  # of the file as it is (fixing shapes and folding change it)
    unsupported = find_unsupported_ops(model)
    if unsupported:
        raise UnsupportedModelError(
            f"{path.name} uses operators TVM {_tvm.TVM_VERSION} cannot import: "
            f"{_format_unsupported(unsupported)}; replace them before export")
    specs = fixed_input_specs(model, config)
    prepared = fold(model, specs) if config.fold_constants else model
    if rewrite is not None:
        prepared = rewrite(prepared, specs)
    opset = onnx_opset(model)
    import_opset = onnx_opset(prepared) or opset
    try:
        mod = _tvm.from_onnx(prepared, shape_dict={s.name: list(s.shape) for s in specs},
                             dtype_dict={s.name: s.dtype for s in specs}, opset=import_opset)
    except Exception as err:  # TVM's converters raise TVMError/ValueError/NotImplementedError
        first = (str(err).strip().splitlines() or [type(err).__name__])[-1]
        raise UnsupportedModelError(f"TVM could not import {path.name}: {first}") from None
    outputs = _output_specs(mod, prepared)
    metadata = {p.key: p.value for p in model.metadata_props}
    counts = dict(sorted(op_histogram(model).items()))
    log.info("imported %s: opset %d, %d nodes, inputs %s", path.name, opset,
             sum(counts.values()), [(s.name, s.shape) for s in specs])
    return ImportedModel(mod, path, sha256_file(path), opset, specs, outputs, prepared,
                         metadata, counts, time.perf_counter() - start, graph)

