"""Register-tiled depthwise schedules: found, built, timed, committed only when faster and right."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from tvm import te, topi

from compile import _tvm
from compile.depthwise_tiles import (
    depthwise_extents,
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


@pytest.fixture(scope="module")
def target():
    return build_target(tvm.target.Target({"kind": "llvm", "mcpu": host_cpu(), "num-cores": 2}))


@pytest.fixture(scope="module")
def poor_trace(target):
    """A trace of MetaSchedule's own design space, its channel tile 1 innermost (no vectors)."""
    mod = depthwise_nhwc()
    context = ms.TuneContext(mod=mod, target=target, space_generator="post-order-apply",
                             task_name="dw")
    trace = context.generate_design_space()[0].trace
    tiles = [i for i in trace.insts if i.kind.name == "SamplePerfectTile"]
    trace = trace.with_decision(tiles[3], [1, 1, CHANNELS, 1], remove_postproc=True)
    schedule = _tvm.Schedule(mod)
    trace.apply_to_schedule(schedule, remove_postproc=True)
    schedule.enter_postproc()
    assert all(p.apply(schedule) for p in context.space_generator.postprocs)
    return schedule.trace


def run_kernel(mod: tvm.IRModule, target, data: np.ndarray, weight: np.ndarray) -> np.ndarray:
    lib = tvm.compile(mod, target=target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((1, HEIGHT, WIDTH, CHANNELS), "int32"), dev)
    lib["main"](tvm.runtime.tensor(data, dev), tvm.runtime.tensor(weight, dev), out)
    return out.numpy()


def test_extents_and_variants(poor_trace):
    extents = depthwise_extents(depthwise_nhwc(), poor_trace)
    assert extents == [1, HEIGHT, WIDTH, CHANNELS, 3, 3, 1]
    variants = tile_variants(extents)
    assert len(variants) == 8  # columns 4 or 7, rows 1 or 2, unroll 16 or 64
    for spec in variants:
        assert math.prod(spec[1]) == HEIGHT and math.prod(spec[2]) == WIDTH
        assert spec[3] == [1, CHANNELS // 16, 1, 16] and spec[4] == spec[5] == [1, 3]
    assert depthwise_extents(depthwise_nhwc(), tvm.s_tir.schedule.Trace([], {})) is None


def test_a_variant_computes_what_the_kernel_as_written_computes(poor_trace, target):
    mod = depthwise_nhwc()
    rng = np.random.default_rng(0)
    data = rng.integers(-32768, 32767, (1, HEIGHT, WIDTH, CHANNELS), dtype=np.int16)
    weight = rng.integers(-128, 127, (3, 3, 1, CHANNELS), dtype=np.int8)
    expected = run_kernel(mod, target, data, weight)
    spec = tile_variants(depthwise_extents(mod, poor_trace))[-1]
    schedule = variant_schedule(mod, poor_trace, spec, target)
    assert schedule is not None
    np.testing.assert_array_equal(run_kernel(schedule.mod, target, data, weight), expected)


def test_faster_variant_is_committed_once(poor_trace, target, tmp_path):
    mod = depthwise_nhwc()
    database = ms.database.JSONDatabase(work_dir=str(tmp_path))
    workload = database.commit_workload(mod)
    args = ms.arg_info.ArgInfo.from_entry_func(mod, True)
    database.commit_tuning_record(ms.database.TuningRecord(poor_trace, workload, [1.0], target,
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
