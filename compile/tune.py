"""``python -m compile.tune model=<m> target=<t> [tuning=smoke|quick|full] [tuning.trials=N]``."""

from __future__ import annotations

from .cli import main, relative
from .config import CompileJob
from .tuning import TuneResult, run_tune, task_table


def summary(result: TuneResult) -> str:
    """Format the tuning job's outcome for the terminal."""
    est = result.est_latency_ms
    lines = [
        f"model      {result.model}",
        f"target     {result.target}",
        f"trials     {result.trials_run} this run, {result.trials_total} in all; "
        f"{result.wall_s / 60:.1f} min, {result.trials_per_min:.1f} trials/min",
        f"estimate   {est:.3f} ms per run (sum of weight x best kernel time)" if est else
        "estimate   incomplete: some tasks have no measurement yet",
        f"database   {relative(result.database)} ({result.records_kept} records kept"
        + (f", {result.records_rejected} left out by the record check)"
           if result.records_rejected else ")"),
        "heaviest tasks:",
        f"  {'task':44} {'share':>6} {'best us':>10} {'GFLOP/s':>8} {'trials':>6}",
    ]
    for row in task_table(result.tasks)[:10]:
        gflops = f"{row['gflops_per_s']:.1f}" if row["gflops_per_s"] else "-"
        best = f"{row['best_us']:.1f}" if row["best_us"] else "-"
        lines.append(f"  {row['task'][:44]:44} {row['share']:6.1%} {best:>10} {gflops:>8} "
                     f"{row['trials']:6d} {row['skipped']}")
    lines += [f"warning    {w}" for w in result.warnings]
    lines.append("next       python -m compile model=... target=... applies this database")
    return "\n".join(lines)


if __name__ == "__main__":
    main("tune", CompileJob, run_tune, summary)
