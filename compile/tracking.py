"""MLflow tracking: one run per job, named ``<job>/<model>/<target>``.

The default store is a SQLite file in the project folder (``tracking=sqlite``) with artifacts in
``mlartifacts/`` beside it; ``tracking=server tracking.uri=http://...`` logs to a team server.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from . import _tvm
from .config import PROJECT_ROOT, TrackingConfig
from .errors import ConfigError

log = logging.getLogger(__name__)

#: MLflow's limit on a parameter value's length (characters).
PARAM_MAX_CHARS = 6000


def git_commit(root: Path = PROJECT_ROOT) -> str:
    """Return ``HEAD``'s commit hash, with ``-dirty`` if the tree has changes, or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def host_cpu_name() -> str:
    """Return the CPU's marketing name from /proc/cpuinfo (or ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def host_tags() -> dict[str, str]:
    """Tags describing this machine and code: host, CPU, git commit, TVM version."""
    return {
        "host": platform.node(),
        "host_cpu": host_cpu_name(),
        "host_llvm_cpu": str(_tvm.llvm_get_system_cpu()),
        "host_cores": str(os.cpu_count()),
        "git_commit": git_commit(),
        "tvm_version": _tvm.TVM_VERSION,
    }


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into dotted keys (``{"a": {"b": 1}}`` → ``{"a.b": 1}``)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _artifact_location(uri: str) -> str | None:
    """Artifact folder for an embedded SQLite store: ``mlartifacts/`` beside the database."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    db_path = Path(uri[len("sqlite:///"):])
    return (db_path.parent / "mlartifacts").resolve().as_uri()


class Tracker:
    """An MLflow run, or a no-op stand-in when ``tracking.enabled=false``.

    Parameters
    ----------
    run : mlflow.ActiveRun or None
        The run to log into; ``None`` disables logging.
    """

    def __init__(self, run: Any | None):
        self._run = run

    @property
    def run_id(self) -> str | None:
        """The MLflow run id, or None when tracking is off."""
        return self._run.info.run_id if self._run else None

    @property
    def enabled(self) -> bool:
        """Whether anything is logged."""
        return self._run is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters (nested mappings flattened to dotted names)."""
        if self._run:
            import mlflow

            flat = {k: str(v)[:PARAM_MAX_CHARS] for k, v in flatten(params).items()}
            mlflow.log_params(flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log numeric metrics; names carry their unit (``compile_s``, ``latency_ms_p50``)."""
        if self._run:
            import mlflow

            clean = {k: float(v) for k, v in metrics.items() if v is not None}
            mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags."""
        if self._run:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file or folder into the run's artifacts."""
        if self._run:
            import mlflow

            path = Path(path)
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path)
            else:
                mlflow.log_artifact(str(path), artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        """Log JSON/YAML data as an artifact file (format from the name's suffix)."""
        if self._run:
            import mlflow

            mlflow.log_dict(data, name)

    def log_text(self, text: str, name: str) -> None:
        """Log text as an artifact file."""
        if self._run:
            import mlflow

            mlflow.log_text(text, name)


@contextmanager
def tracked_run(cfg: TrackingConfig, run_name: str,
                tags: Mapping[str, str] | None = None) -> Iterator[Tracker]:
    """Open an MLflow run for a job; it ends FAILED if the block raises.

    Parameters
    ----------
    cfg : TrackingConfig
        Store URI and experiment; ``enabled=false`` yields a no-op tracker.
    run_name : str
        ``<job>/<model>/<target>``.
    tags : mapping, optional
        Extra tags; host, git commit and TVM version are always set.

    Raises
    ------
    ConfigError
        If the store cannot be reached or opened.
    """
    if not cfg.enabled:
        yield Tracker(None)
        return
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow.exceptions import MlflowException

    for noisy in ("alembic", "mlflow.store", "mlflow.tracking"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        mlflow.set_tracking_uri(cfg.uri)
        client = mlflow.MlflowClient()
        experiment = client.get_experiment_by_name(cfg.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(cfg.experiment,
                                                     artifact_location=_artifact_location(cfg.uri))
        else:
            experiment_id = experiment.experiment_id
        run = mlflow.start_run(run_name=run_name, experiment_id=experiment_id,
                               tags={**host_tags(), **(tags or {})})
    except MlflowException as err:
        raise ConfigError(f"cannot open the MLflow store tracking.uri={cfg.uri}: "
                          f"{str(err).splitlines()[0]}") from None
    status = "FAILED"
    try:
        yield Tracker(run)
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)
