"""Register-tiled depthwise schedules: found, built, timed, committed only when faster and right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import te, topi

from compile import _tvm
from compile.depthwise_tiles import (
    Depthwise,
    find_depthwise,
    tile_variants,
    try_register_tiles,
    variant_schedule,
)
from compile.targets import build_target, host_cpu
from compile.tuning_db import replayed

pytestmark = pytest.mark.tuning
ms = _tvm.ms

HEIGHT, WIDTH, CHANNELS = 28, 28, 32


def depthwise_nhwc() -> tvm.IRModule:
    """int16 NHWC input (1, 28, 28, 32), int8 HWIO weights (3, 3, 1, 32), int32 output."""
    data = te.placeholder((1, HEIGHT, WIDTH, CHANNELS), "int16", name="data")
    weight = te.placeholder((3, 3, 1, CHANNELS), "int8", name="weight")
    out = topi.nn.group_conv2d_nhwc(data, weight, 1, 1, 1, CHANNELS, out_dtype="int32")
    return tvm.IRModule({"main": te.create_prim_func([data, weight, out])})


def depthwise_nchw() -> tvm.IRModule:
    """float32 NCHW input (1, 32, 28, 32), OIHW weights (32, 1, 3, 3), stride 1, padding 1."""
    data = te.placeholder((1, CHANNELS, HEIGHT, 32), "float32", name="data")
    weight = te.placeholder((CHANNELS, 1, 3, 3), "float32", name="weight")
    out = topi.nn.group_conv2d_nchw(data, weight, 1, 1, 1, CHANNELS)
    return tvm.IRModule({"main": te.create_prim_func([data, weight, out])})


@pytest.fixture(scope="module")
def target():
    return build_target(tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": 2}))


def poor_trace(mod: tvm.IRModule, target, channel_index: int):
    """A trace of MetaSchedule's own design space, its channel tile 1 innermost."""
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             task_name="dw")
    trace = context.generate_design_space()[0].trace
    tiles = [i for i in trace.insts if i.kind.name == "SamplePerfectTile"]
    trace = trace.with_decision(tiles[channel_index], [1, 1, CHANNELS, 1], remove_postproc=True)
    schedule = _tvm.Schedule(mod)
    trace.apply_to_schedule(schedule, remove_postproc=True)
    schedule.enter_postproc()
    assert all(p.apply(schedule) for p in context.space_generator.postprocs)
    return schedule.trace


@pytest.fixture(scope="module")
def nhwc_trace(target):
    """NHWC with channels not innermost: scalar code."""
    return poor_trace(depthwise_nhwc(), target, 3)


def run_kernel(mod: tvm.IRModule, target, *arrays: np.ndarray) -> np.ndarray:
    lib = tvm.compile(mod, target=target)
    dev = tvm.cpu()
    shape = [int(v) for v in mod["main"].params[-1].ty.shape]
    dtype = str(mod["main"].params[-1].ty.dtype)
    out = tvm.runtime.tensor(np.zeros(shape, dtype), dev)
    lib["main"](*(tvm.runtime.tensor(a, dev) for a in arrays), out)
    return out.numpy()


def test_extents_and_variants(nhwc_trace, target):
    dw = find_depthwise(depthwise_nhwc(), nhwc_trace)
    assert dw == Depthwise("group_conv2d_nhwc", CHANNELS, HEIGHT, WIDTH, 3, 3)
    variants = tile_variants(dw)
    assert len(variants) == 8  # columns 4 or 7, rows 1 or 2, unroll 16 or 64
    for spec in variants:
        assert math.prod(spec["rows"]) == HEIGHT and math.prod(spec["columns"]) == WIDTH
        assert spec["channels"] == [1, CHANNELS // 16, 1, 16]
        assert spec["kernel_h"] == spec["kernel_w"] == [1, 3]
    assert find_depthwise(depthwise_nhwc(), tvm.s_tir.schedule.Trace([], {})) is None
    nchw = find_depthwise(depthwise_nchw(), poor_trace(depthwise_nchw(), target, 1))
    assert nchw == Depthwise("group_conv2d_nchw", CHANNELS, HEIGHT, 32, 3, 3)
    # Vectors along the columns: 16 or 32 of them, one channel, 1, 2 or 4 rows.
    assert {(s["columns"][-1], s["channels"][-1], s["rows"][-1])
            for s in tile_variants(nchw)} == {(c, 1, r) for c in (16, 32) for r in (1, 2, 4)}


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_every_variant_computes_what_the_kernel_as_written_computes(layout, target):
    rng = np.random.default_rng(0)
    if layout == "NHWC":
        mod, channel_index = depthwise_nhwc(), 3
        arrays = (rng.integers(-32768, 32767, (1, HEIGHT, WIDTH, CHANNELS), dtype=np.int16),
                  rng.integers(-128, 127, (3, 3, 1, CHANNELS), dtype=np.int8))
    else:
        mod, channel_index = depthwise_nchw(), 1
        arrays = (rng.standard_normal((1, CHANNELS, HEIGHT, 32), dtype=np.float32),
                  rng.standard_normal((CHANNELS, 1, 3, 3), dtype=np.float32))
    trace = poor_trace(mod, target, channel_index)
    expected = run_kernel(mod, target, *arrays)
    dw = find_depthwise(mod, trace)
    schedules = [variant_schedule(mod, trace, dw, spec, target) for spec in tile_variants(dw)]
    assert schedules and all(s is not None for s in schedules)
    # Every row tile, both unrolls, both column tiles (NHWC 8 variants, NCHW 12).
    for schedule in schedules[::3 if layout == "NHWC" else 5]:
        np.testing.assert_allclose(run_kernel(schedule.mod, target, *arrays), expected,
                                   rtol=1e-5, atol=1e-5)


def test_faster_variant_is_committed_once(nhwc_trace, target, tmp_path):
    mod = depthwise_nhwc()
    database = ms.database.JSONDatabase(work_dir=str(tmp_path))
    workload = database.commit_workload(mod)
    args = ms.arg_info.ArgInfo.from_entry_func(mod, True)
    database.commit_tuning_record(ms.database.TuningRecord(nhwc_trace, workload, [1.0], target,
                                                           args))

    class Task:
        task_name = "fused_dw"
        dispatched = [mod]

    def measurers():
        return (ms.builder.LocalBuilder(max_workers=2),
                ms.runner.LocalRunner(timeout_sec=30))

    tried = try_register_tiles(database, [Task()], target, *measurers(), repeats=1)
    assert set(tried) == {"fused_dw"}
    outcome = tried["fused_dw"]
    # Channel tile 1 innermost runs scalar code; 16 int32 lanes innermost run vectors.
    assert outcome["committed"] and outcome["variant_us"] < 0.95 * outcome["record_us"]
    best = database.get_top_k(workload, 1)[0]
    assert best.run_secs[0].value == pytest.approx(outcome["variant_us"] * 1e-6, rel=1e-3)
    assert replayed(best.trace, mod) is not None
    # The best record has the tiles now: a second run leaves the workload alone.
    assert try_register_tiles(database, [Task()], target, *measurers(), repeats=1) == {}
