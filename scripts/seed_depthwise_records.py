"""Seed register-tiled schedules of the depthwise convolutions into an int8 NHWC tuning database.

Used once, on 2026-11-25, for ``tune_logs/mobilenet_v2/x86_64-znver5/int8/nhwc`` (its
provenance's run of that day, ``seeded_records``). MetaSchedule's evolutionary search had not
reached these tiles in 5836 trials: the output-width tile (4-8 pixels) and a 16-channel tile
innermost, the whole 3x3 reduction just outside them, so the accumulators stay in registers
across the taps, as oneDNN's depthwise kernels keep them.

For each depthwise workload (a ``group_conv2d`` block) whose input has ``IN_DTYPE`` (uint16 or
int16), its best record's trace is replayed with those tile decisions (unroll 16 or 64); the
record and the variants are built as the tuning job builds candidates and timed by
MetaSchedule's ``LocalRunner`` (median of 3); a variant at least 5 % faster than both the
record's time now and its database time is committed to the database's plain JSON files.
Then run the tuning job on the database (a short run): it checks the kept records' kernels
against the kernels as written (``tuning.check``), prunes and packs.

Usage (the tuning job's thread count, as it sets it)::

    TVM_NUM_THREADS=2 IN_DTYPE=uint16 python scripts/seed_depthwise_records.py <db folder> [--commit]
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tvm  # noqa: E402

from compile import _tvm, targets, tuning_db  # noqa: E402
from compile._tvm import ms  # noqa: E402
from compile.ms_worker import build_candidate  # noqa: E402


def _divisors(n: int, lo: int, hi: int) -> list[int]:
    return [d for d in range(lo, hi + 1) if n % d == 0]


def tile_variants(shape: list[int]) -> list[dict]:
    """SamplePerfectTile decisions by index (1: rows, 2: columns, 3: channels, 4-5: kernel)."""
    _, height, width, channels = shape
    out = []
    for xi in _divisors(width, 4, 8)[-2:] or [width]:
        for yi in (1, 2):
            if height % yi:
                continue
            ci = 16 if channels % 16 == 0 else 8
            for unroll in (1, 2):  # categorical decision: 16 or 64 explicit unroll steps
                out.append({1: [height // yi, 1, 1, yi], 2: [1, width // xi, 1, xi],
                            3: [1, channels // ci, 1, ci], 4: [1, 3], 5: [1, 3],
                            "unroll": unroll})
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    commit = "--commit" in sys.argv
    in_dtype = os.environ.get("IN_DTYPE", "uint16")
    database = tuning_db.open_database(folder, read_only=True)
    provenance = json.loads((folder / "provenance.json").read_text())
    target = targets.build_target(tvm.target.Target(provenance["target"]))
    best = {}
    for record in database.get_all_tuning_records():
        blocks = [str(i.attrs[0]) for i in record.trace.insts if i.kind.name == "GetSBlock"]
        if not record.run_secs or not any("group_conv2d" in b for b in blocks):
            continue
        seconds = sum(float(x) for x in record.run_secs) / len(record.run_secs)
        key = tuning_db.workload_key(_tvm.structural_hash(record.workload.mod))
        if key not in best or seconds < best[key][0]:
            best[key] = (seconds, record)

    def variant(record, spec):
        tiles = [i for i in record.trace.insts if i.kind.name == "SamplePerfectTile"]
        cats = [i for i in record.trace.insts if i.kind.name == "SampleCategorical"]
        trace = record.trace
        for k, v in spec.items():
            inst = cats[0] if k == "unroll" else tiles[k]
            trace = trace.with_decision(inst, v, remove_postproc=True)
        context = ms.TuneContext(mod=record.workload.mod, target=target,
                                 space_generator="post-order-apply", task_name="seed")
        scheds = []
        for source in (trace, None):  # applied, then replayed as the search replays it
            sch = _tvm.Schedule(record.workload.mod)
            (source or scheds[0].trace).apply_to_schedule(sch, remove_postproc=True)
            sch.enter_postproc()
            if not all(p.apply(sch) for p in context.space_generator.postprocs):
                return None
            scheds.append(sch)
        tvm.ir.assert_structural_equal(scheds[0].mod, scheds[1].mod)
        return scheds[0]

    builder = ms.builder.LocalBuilder(
        max_workers=2, f_build=functools.partial(build_candidate, max_unroll_steps=None))
    runner = ms.runner.LocalRunner(timeout_sec=30)

    def measure(mods) -> list[float]:
        built = builder.build([ms.builder.BuilderInput(m, target) for m in mods])
        inputs = [ms.runner.RunnerInput(b.artifact_path, "cpu",
                                        ms.arg_info.ArgInfo.from_entry_func(m, True))
                  for b, m in zip(built, mods, strict=True)]
        times = []
        for future in runner.run(inputs):
            result = future.result()
            times.append(float(result.run_secs[0]) * 1e6 if result.run_secs else float("inf"))
        return times

    writable = tuning_db.open_database(folder) if commit else None
    for key, (seconds, record) in sorted(best.items(), key=lambda kv: -kv[1][0]):
        params = record.workload.mod["main"].params
        if str(params[0].dtype) != in_dtype:
            continue
        shape = [int(s) for s in params[-1].shape]
        base = _tvm.Schedule(record.workload.mod)
        record.trace.apply_to_schedule(base, remove_postproc=False)
        scheds, specs = [base], ["record"]
        for spec in tile_variants(shape):
            sch = variant(record, spec)
            if sch is not None:
                scheds.append(sch)
                specs.append(spec)
        runs = [measure([s.mod for s in scheds]) for _ in range(3)]
        median = [sorted(t)[1] for t in zip(*runs, strict=True)]
        i = min(range(len(median)), key=median.__getitem__)
        print(key, shape, "database us", round(seconds * 1e6, 1), "record now",
              round(median[0], 1), "best", specs[i], round(median[i], 1), flush=True)
        if writable is not None and i > 0 and median[i] < 0.95 * min(median[0], seconds * 1e6):
            workload = writable.commit_workload(record.workload.mod)
            writable.commit_tuning_record(ms.database.TuningRecord(
                scheds[i].trace, workload, [median[i] * 1e-6], record.target,
                record.args_info))
            print("committed", key, flush=True)


if __name__ == "__main__":
    main()
