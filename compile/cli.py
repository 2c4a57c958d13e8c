"""The thin command-line layer shared by the jobs (``python -m compile``, ``compile.tune``, ...).

Each job module calls :func:`main` with its config name, schema and job function. This layer
checks config-group names before Hydra composes anything, turns the composed config into the
typed job once, opens the MLflow run, calls the job, prints its summary, and turns the
project's expected errors into one line on stderr and exit code 2 (no traceback). Under Hydra
multirun every job runs; the exit code is 2 if any failed.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import PROJECT_ROOT, register_configs, to_job
from .errors import PipelineError

CONF_DIR = PROJECT_ROOT / "conf"
#: Config groups whose names are checked before Hydra runs (choices are conf/<group>/*.yaml).
GROUPS = ("model", "target", "tuning", "quant", "tracking", "paths")

log = logging.getLogger(__name__)


def group_choices(group: str) -> list[str]:
    """Names a config group offers (its YAML files under ``conf/<group>/``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_overrides(argv: list[str]) -> str | None:
    """Return an error line for unknown group choices on the command line, or None.

    Handles single values and multirun lists (``target=x86_64,aarch64``).
    """
    problems = []
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS:
            continue
        choices = group_choices(key)
        unknown = [v for v in value.split(",") if v and v not in choices]
        if unknown:
            problems.append(f"unknown {key} {', '.join(map(repr, unknown))}; "
                            f"choose one of: {', '.join(choices)}")
    return "; ".join(problems) or None


def fail(message: str) -> None:
    """Print an expected error as one line on stderr."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def run_name(job_name: str, job: Any) -> str:
    """MLflow run name: ``<job>/<model>/<target>``, plus ``/<quant>`` for quantized variants."""
    name = f"{job_name}/{job.model.name}/{job.target.name}"
    scheme = job.quant.scheme.name
    return name if scheme == "none" else f"{name}/{scheme}"


def main(job_name: str, schema: type, job_fn: Callable[[Any, Any], Any],
         summary: Callable[[Any], str]) -> None:
    """Run a job from the command line and exit (0, or 2 on an expected error).

    Parameters
    ----------
    job_name : str
        ``compile``, ``tune`` or ``bench``: the primary config in ``conf/`` and the first part
        of the MLflow run name.
    schema : type
        The job's dataclass (e.g. ``CompileJob``).
    job_fn : callable
        ``job_fn(job, tracker) -> result``.
    summary : callable
        ``summary(result) -> str`` printed on success.
    """
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from .tracking import tracked_run

    problem = check_group_overrides(sys.argv[1:])
    if problem:
        fail(problem)
        sys.exit(2)
    register_configs()
    failures: list[str] = []
    crashed: list[BaseException] = []

    @hydra.main(version_base=None, config_path=str(CONF_DIR), config_name=job_name)
    def _hydra_entry(cfg: DictConfig) -> None:
        try:
            job = to_job(cfg, schema)
            with tracked_run(job.tracking, run_name(job_name, job)) as tracker:
                tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
                result = job_fn(job, tracker)
            print(summary(result), flush=True)
            if tracker.run_id:
                print(f"mlflow     run {tracker.run_id}; UI: make ui (http://127.0.0.1:5000)",
                      flush=True)
        except PipelineError as err:
            failures.append(str(err))
            fail(str(err))
        except KeyboardInterrupt:
            failures.append("interrupted")
            fail("interrupted; nothing half-written was kept")
        except Exception as err:  # a bug, not a user error: Hydra prints the traceback
            crashed.append(err)
            raise

    try:
        _hydra_entry()
    except SystemExit as exit_:
        if exit_.code in (0, None):
            sys.exit(0)
        # Hydra exits 1 for its own config errors (bad override, missing key): the user's to fix.
        sys.exit(1 if crashed else 2)
    sys.exit(2 if failures else 0)


def relative(path: Path) -> str:
    """Show a path relative to the project root when it is inside it."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
