"""compile.row_parallel: which parallel schedules split output rows among threads."""

from pathlib import Path

import pytest
import tvm
from tvm.script import tirx as T

from compile import _tvm
from compile.config import TuningConfig
from compile.errors import ConfigError
from compile.row_parallel import RowParallel, rows_split
from compile.tuning import parallel_rows, search_space


@T.prim_func(s_tir=True)
def by_rows(A: T.Buffer((1, 16, 16, 32), "float32"), B: T.Buffer((1, 16, 16, 32), "float32")):
    for h in T.parallel(16):
        for w, c in T.grid(16, 32):
            with T.sblock("B"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                B[0, vh, vw, vc] = A[0, vh, vw, vc] * T.float32(2)


@T.prim_func(s_tir=True)
def by_row_tiles(A: T.Buffer((1, 16, 16, 32), "float32"),
                 B: T.Buffer((1, 16, 16, 32), "float32")):
    # the fused outer tiles of MetaSchedule's schedules: rows (2 tiles) x channels (2 tiles)
    for hc in T.parallel(4):
        for h1, w, c1 in T.grid(8, 16, 16):
            with T.sblock("B"):
                vh = T.axis.spatial(16, hc // 2 * 8 + h1)
                vw = T.axis.spatial(16, w)
                vc = T.axis.spatial(32, hc % 2 * 16 + c1)
                B[0, vh, vw, vc] = A[0, vh, vw, vc] * T.float32(2)


@T.prim_func(s_tir=True)
def by_channels(A: T.Buffer((1, 16, 16, 32), "float32"),
                B: T.Buffer((1, 16, 16, 32), "float32")):
    for c in T.parallel(32):
        for h, w in T.grid(16, 16):
            with T.sblock("B"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                B[0, vh, vw, vc] = A[0, vh, vw, vc] * T.float32(2)


@T.prim_func(s_tir=True)
def accumulate_by_channels(A: T.Buffer((1, 16, 16, 32), "float32"),
                           B: T.Buffer((1, 16, 16, 32), "float32")):
    # rows split in the epilogue, but the accumulator (same shape as the output) by channels:
    # the reads of A still cross between cores
    acc = T.sblock_alloc_buffer((1, 16, 16, 32), "float32")
    for c in T.parallel(32):
        for h, w in T.grid(16, 16):
            with T.sblock("acc"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                acc[0, vh, vw, vc] = A[0, vh, vw, vc] * T.float32(2)
    for h in T.parallel(16):
        for w, c in T.grid(16, 32):
            with T.sblock("B"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                B[0, vh, vw, vc] = acc[0, vh, vw, vc] + T.float32(1)


@T.prim_func(s_tir=True)
def small_by_channels(A: T.Buffer((1, 7, 7, 32), "float32"),
                      B: T.Buffer((1, 7, 7, 32), "float32")):
    for c in T.parallel(32):
        for h, w in T.grid(7, 7):
            with T.sblock("B"):
                vh, vw, vc = T.axis.remap("SSS", [h, w, c])
                B[0, vh, vw, vc] = A[0, vh, vw, vc] * T.float32(2)


@T.prim_func(s_tir=True)
def dense(A: T.Buffer((4, 64), "float32"), B: T.Buffer((4, 64), "float32")):
    for j in T.parallel(64):
        for i in range(4):
            with T.sblock("B"):
                vi, vj = T.axis.remap("SS", [i, j])
                B[vi, vj] = A[vi, vj]


@T.prim_func(s_tir=True)
def nchw_channels_then_rows(A: T.Buffer((1, 32, 16, 16), "float32"),
                            B: T.Buffer((1, 32, 16, 16), "float32")):
    # fused outer tiles (channels: 2, rows: 4): the first half of the chunks is channels 0-15
    for ch in T.parallel(8):
        for c1, h1, w in T.grid(16, 4, 16):
            with T.sblock("B"):
                vc = T.axis.spatial(32, ch // 4 * 16 + c1)
                vh = T.axis.spatial(16, ch % 4 * 4 + h1)
                vw = T.axis.spatial(16, w)
                B[0, vc, vh, vw] = A[0, vc, vh, vw] * T.float32(2)


@T.prim_func(s_tir=True)
def nchw_rows(A: T.Buffer((1, 32, 16, 16), "float32"), B: T.Buffer((1, 32, 16, 16), "float32")):
    for h in T.parallel(16):
        for c, w in T.grid(32, 16):
            with T.sblock("B"):
                vc, vh, vw = T.axis.remap("SSS", [c, h, w])
                B[0, vc, vh, vw] = A[0, vc, vh, vw] * T.float32(2)


def test_nchw_rows_are_axis_2_and_the_channels_must_not_be_split():
    assert rows_split(nchw_rows, axis=2)
    assert not rows_split(nchw_channels_then_rows, axis=2)
    assert not rows_split(nchw_rows, axis=1)  # read as NHWC, axis 1 would be the channels


def test_rows_and_row_tiles_pass_channels_fail():
    assert rows_split(by_rows)
    assert rows_split(by_row_tiles)
    assert not rows_split(by_channels)
    assert not rows_split(accumulate_by_channels)


def test_small_and_non_image_outputs_are_left_alone():
    assert rows_split(small_by_channels)  # 7 rows: under MIN_ROWS
    assert not rows_split(small_by_channels, min_rows=7)
    assert rows_split(dense)


@T.prim_func(s_tir=True)
def serial(A: T.Buffer((1, 16, 16, 32), "float32"), B: T.Buffer((1, 16, 16, 32), "float32")):
    for h, w, c in T.grid(16, 16, 32):
        with T.sblock("B"):
            vh, vw, vc = T.axis.remap("SSS", [h, w, c])
            B[0, vh, vw, vc] = A[0, vh, vw, vc] * T.float32(2)


def test_postproc_rejects_a_schedule_that_splits_channels():
    postproc = RowParallel()
    rows = _tvm.Schedule(tvm.IRModule({"main": serial}))
    h, w, _ = rows.get_loops(rows.get_sblock("B"))
    rows.parallel(rows.fuse(h, w))
    assert postproc.apply(rows)
    channels = _tvm.Schedule(tvm.IRModule({"main": serial}))
    h, w, c = channels.get_loops(channels.get_sblock("B"))
    channels.reorder(c, h, w)
    channels.parallel(c)
    assert not postproc.apply(channels)
    assert rows_split(serial)  # no parallel loop: nothing to check


def test_row_parallel_space_keeps_the_default_postprocs_and_adds_the_check():
    target = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2})
    probe = _tvm.ms.TuneContext(mod=tvm.IRModule({"main": by_rows}), target=target,
                                space_generator="post-order-apply", task_name="probe")
    default = [type(p).__name__ for p in probe.space_generator.postprocs]
    assert search_space(None) == "post-order-apply"
    space = search_space(None, RowParallel(), list(probe.space_generator.postprocs))
    context = _tvm.ms.TuneContext(mod=tvm.IRModule({"main": by_rows}), target=target,
                                  space_generator=space, task_name="rows")
    postprocs = context.space_generator.postprocs
    assert [type(p).__name__ for p in postprocs[:-1]] == default
    assert not postprocs[-1].apply(_tvm.Schedule(tvm.IRModule({"main": by_channels})))
    assert postprocs[-1].apply(_tvm.Schedule(tvm.IRModule({"main": by_rows})))


def test_parallel_rows_follows_the_database_and_refuses_to_mix():
    folder = Path("tune_logs/m/x86_64")
    unset, on, off = (TuningConfig(parallel_rows=v) for v in (None, True, False))
    assert parallel_rows(unset, None, folder) is True  # a new database
    assert parallel_rows(unset, None, folder, new=False) is False  # a new one for quant=int8
    assert parallel_rows(on, None, folder, new=False) is True
    assert parallel_rows(unset, {"tasks": {}}, folder) is False  # tuned before the option
    assert parallel_rows(unset, {"parallel_rows": True}, folder) is True
    assert parallel_rows(off, None, folder) is False
    assert parallel_rows(on, {"parallel_rows": True}, folder) is True
    with pytest.raises(ConfigError, match="tuned with tuning.parallel_rows=false"):
        parallel_rows(on, {"tasks": {}}, folder)
    with pytest.raises(ConfigError, match="tuned with tuning.parallel_rows=true"):
        parallel_rows(off, {"parallel_rows": True}, folder)
