"""``python -m compile.bench model=<m> target=<t> [bench.threads=[1,2]]``: ours vs peers."""

from __future__ import annotations

from .benchmark import BenchResult, run_bench, table
from .cli import main, relative
from .config import BenchJob


def summary(result: BenchResult) -> str:
    """Format the benchmark for the terminal."""
    tuning = result.tuning
    lines = [f"model      {result.model}",
             f"target     {result.target}  artifact {relative(result.artifact_dir)}",
             f"tuning     {tuning['tasks_tuned']}/{tuning['tasks_total']} tasks tuned "
             f"(database {tuning['database_sha256'][:16]})",
             f"versions   {result.versions}", "", table(result), ""]
    width = max((len(peer) for peer in result.ratios), default=0)
    for peer, ratio in result.ratios.items():
        verdict = "faster" if ratio < 1 else "slower"
        lines.append(f"ours / {peer:{width}} {ratio:6.2f}  (best thread count of each; "
                     f"ours is {verdict})")
    return "\n".join(lines)


if __name__ == "__main__":
    main("bench", BenchJob, run_bench, summary)
