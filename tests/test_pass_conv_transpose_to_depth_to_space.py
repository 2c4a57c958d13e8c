"""ConvTransposeToDepthToSpace: TVMScript Before/Expected, what it leaves, the same results as the
transposed convolution, and a model with transposed convolutions verified against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.script import relax as R

from compile.job import run_compile
from compile.passes import ConvTransposeToDepthToSpace
from compile.prepare import prepare_model

RNG = np.random.default_rng(11)
W = RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)  # IOHW: 4 in, 3 out, kernel 2
W_1X1 = np.ascontiguousarray(W.transpose(1, 2, 3, 0).reshape(12, 4, 1, 1))  # channel (o, i, j)
W_3 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
W_GROUPED = RNG.standard_normal((4, 1, 2, 2)).astype(np.float32)


@tvm.script.ir_module
class Before:
    @R.function
    def main(x: R.Tensor((1, 4, 5, 6), "float32")):
        with R.dataflow():
            y = R.nn.conv2d_transpose(x, R.const(W), strides=[2, 2])
            z = R.nn.relu(y)
            R.output(z)
        return z


@tvm.script.ir_module
class Expected:
    @R.function
    def main(x: R.Tensor((1, 4, 5, 6), "float32")):
        with R.dataflow():
            c = R.nn.conv2d(x, R.const(W_1X1))
            r = R.reshape(c, R.shape([1, 3, 2, 2, 5, 6]))
            t = R.permute_dims(r, axes=[0, 1, 4, 2, 5, 3])
            y = R.reshape(t, R.shape([1, 3, 10, 12]))
            z = R.nn.relu(y)
            R.output(z)
        return z


@tvm.script.ir_module
class Kept:
    """Overlapping windows, padding, output padding, groups: none of them is rewritten."""

    @R.function
    def main(x: R.Tensor((1, 4, 5, 6), "float32")):
        with R.dataflow():
            a = R.nn.conv2d_transpose(x, R.const(W_3), strides=[2, 2])
            b = R.nn.conv2d_transpose(x, R.const(W), strides=[2, 2], padding=[1, 1, 1, 1])
            c = R.nn.conv2d_transpose(x, R.const(W), strides=[2, 2], output_padding=[1, 1])
            d = R.nn.conv2d_transpose(x, R.const(W_GROUPED), strides=[2, 2], groups=4)
            R.output(a, b, c, d)
        return (a, b, c, d)


@tvm.script.ir_module
class WeightArgument:
    """The weight is not a constant: moved with permute_dims and reshape instead of numpy."""

    @R.function
    def main(x: R.Tensor((1, 4, 5, 6), "float32"), w: R.Tensor((4, 3, 3, 2), "float32")):
        with R.dataflow():
            y = R.nn.conv2d_transpose(x, w, strides=[3, 2])
            R.output(y)
        return y


def _run(mod: tvm.IRModule, *args: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def test_rewrite_matches_expected():
    rewrite = ConvTransposeToDepthToSpace()
    tvm.ir.assert_structural_equal(rewrite(Before), relax.transform.Normalize()(Expected))
    assert rewrite.rewritten == 1


def test_other_transposed_convolutions_kept():
    rewrite = ConvTransposeToDepthToSpace()
    assert rewrite(Kept).same_as(Kept)
    assert rewrite.rewritten == 0


def test_same_results_as_the_transposed_convolution():
    x = RNG.standard_normal((1, 4, 5, 6)).astype(np.float32)
    np.testing.assert_allclose(_run(ConvTransposeToDepthToSpace()(Before), x), _run(Before, x),
                               rtol=1e-5, atol=1e-5)
    w = RNG.standard_normal((4, 3, 3, 2)).astype(np.float32)
    rewrite = ConvTransposeToDepthToSpace()
    rewritten = rewrite(WeightArgument)
    assert rewrite.rewritten == 1
    out = _run(rewritten, x, w)
    assert out.shape == (1, 3, 15, 12)
    np.testing.assert_allclose(out, _run(WeightArgument, x, w), rtol=1e-5, atol=1e-5)


def test_model_with_transposed_convolutions_verified_against_onnxruntime(tiny_dir, job_for):
    """Kernel 2 / stride 2 and kernel 3 / stride 3 rewritten, the overlapping one kept; the
    compile job verifies the artifact against ONNX Runtime's ConvTranspose."""
    job = job_for(tiny_dir / "conv_transpose_head.onnx", "target.layout=NCHW")
    prepared = prepare_model(job.model, job.target, job.quant, job.paths)
    rewrites = [p for _, phase in prepared.pipeline.phases for p in phase
                if isinstance(p, ConvTransposeToDepthToSpace)]
    assert [p.rewritten for p in rewrites] == [2]
    kernels = [gv.name_hint for gv in prepared.mod.get_global_vars()]
    assert sum("conv2d_transpose" in k for k in kernels) == 1, kernels
    result = run_compile(job)
    assert result.verification["max_abs_err"] < 1e-4
