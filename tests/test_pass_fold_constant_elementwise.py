"""FoldConstantElementwise: TVMScript Before/Expected, what it leaves, FoldConstant's values."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from compile import _tvm
from compile.passes import FoldConstantElementwise

RNG = np.random.default_rng(7)
A = RNG.standard_normal((2, 8)).astype(np.float32) * 1e3
B = RNG.uniform(1e-3, 10, (2, 8)).astype(np.float32)
B[0, :3] = [np.inf, np.nan, 0.0]
INTS = RNG.integers(-50, 50, (4,)).astype(np.int32)
NAN = np.array([np.nan, 1.0], np.float32)


@tvm.script.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            # a Clip's lower bound as TVM's ONNX importer writes it, then used
            nan = R.isnan(R.const(0.0, "float32"))
            low = R.where(nan, R.const(-np.inf, "float32"), R.const(0.0, "float32"))
            y = R.maximum(x, low)
            # left: integer arithmetic, NaN in maximum, an operand that is not constant
            i = R.divide(R.const(INTS), R.const(np.int32(3)))
            m = R.maximum(R.const(NAN), R.const(np.float32(0.0)))
            z = R.add(y, R.const(np.float32(1.0)))
            R.output(y, i, m, z)
        return (y, i, m, z)


@tvm.script.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 4), "float32")):
        with R.dataflow():
            nan = R.const(False)  # noqa: F841 (dead bindings, as the pass leaves them)
            low = R.const(0.0, "float32")  # noqa: F841
            y = R.maximum(x, R.const(0.0, "float32"))
            i = R.divide(R.const(INTS), R.const(np.int32(3)))
            m = R.maximum(R.const(NAN), R.const(np.float32(0.0)))
            z = R.add(y, R.const(np.float32(1.0)))
            R.output(y, i, m, z)
        return (y, i, m, z)


def test_rewrite_matches_expected():
    folded = FoldConstantElementwise()
    tvm.ir.assert_structural_equal(folded(Before), relax.transform.Normalize()(Expected))
    assert folded.rewritten == 2


def _arithmetic() -> tvm.IRModule:
    """Every folded operator on float32 constants with inf, NaN and zero among them."""
    bb = relax.BlockBuilder()
    a, b = relax.const(A), relax.const(B)
    with bb.function("main", []):
        with bb.dataflow():
            outs = [bb.emit(R.add(a, b)), bb.emit(R.subtract(a, b)), bb.emit(R.multiply(a, b)),
                    bb.emit(R.divide(a, b)), bb.emit(R.sqrt(b)), bb.emit(R.negative(a)),
                    bb.emit(R.maximum(a, R.const(np.float32(0.5)))),
                    bb.emit(R.minimum(a, R.const(np.float32(0.5)))),
                    bb.emit(R.where(R.isinf(b), a, b)), bb.emit(R.isfinite(b)),
                    bb.emit(R.sqrt(R.divide(R.add(a, b), b)))]  # a chain, folded at once
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    return bb.get()


def _constants(mod: tvm.IRModule) -> list[np.ndarray]:
    body = mod["main"].body
    values = []
    for block in body.blocks:
        bound = {b.var: b.value for b in block.bindings}
        for binding in block.bindings:
            if isinstance(binding.value, relax.Tuple):
                for field in binding.value.fields:
                    value = bound.get(field, field)
                    assert isinstance(value, _tvm.RelaxConstant), value
                    values.append(value.value.numpy())
    return values


def test_same_values_as_tvms_fold_constant():
    """TVM's FoldConstant builds and runs a kernel per operator: the same bits, NaN included."""
    mod = _arithmetic()
    ours = FoldConstantElementwise()
    folded = ours(mod)
    assert ours.rewritten == 14
    with tvm.target.Target({"kind": "llvm"}):
        theirs = relax.transform.FoldConstant()(mod)
    for mine, tvms in zip(_constants(folded), _constants(theirs), strict=True):
        assert mine.dtype == tvms.dtype and mine.shape == tvms.shape
        np.testing.assert_array_equal(mine.view(np.uint8), tvms.view(np.uint8))


def test_pipeline_gives_the_module_fold_constant_gave():
    """ppocr_cls (float32, NCHW) prepared with and without the pass: the same module (so the
    committed databases apply), the importer's Clip bounds folded by numpy."""
    from compile.config import QuantScheme
    from compile.importer import import_model
    from compile.pipeline import Pipeline, preparation_pipeline
    from compile.zoo import fetch_model

    from .conftest import CACHE_DIR, compose

    job = compose("model=ppocr_cls", "target.layout=NCHW")
    imported = import_model(fetch_model(job.model, CACHE_DIR), job.model, None)
    pipeline = preparation_pipeline(job.target, QuantScheme.none)
    (graph, passes), *rest = pipeline.phases
    kept = tuple(p for p in passes if not isinstance(p, FoldConstantElementwise))
    assert len(kept) == len(passes) - 1
    target = tvm.target.Target({"kind": "llvm"})
    ours, _ = pipeline.run(imported.mod, target)
    theirs, _ = Pipeline("without", ((graph, kept), *rest)).run(imported.mod, target)
    folder = next(p for p in passes if isinstance(p, FoldConstantElementwise))
    assert folder.rewritten >= 20  # isnan and where of each Clip bound
    tvm.ir.assert_structural_equal(ours, theirs, map_free_vars=True)
