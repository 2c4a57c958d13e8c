"""Artifact folders: staged in a temporary sibling, moved into place whole.

``artifacts/<model>/<target>/`` holds ``model.so`` and ``manifest.json`` (schema in
``runner.manifest``). A job writes into ``artifacts/<model>/.<target>.stage-*``, verifies the
staged artifact through the runner, then swaps it in with renames, so a reader never sees a
half-written artifact and a failed job leaves the previous one untouched.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runner.manifest import LIBRARY_FILE, MANIFEST_FILE, SCHEMA_VERSION, TensorSpec, sha256_file

from . import _tvm


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via a temporary sibling and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class StagedArtifact:
    """A temporary artifact folder that becomes ``final`` on :meth:`commit`, or vanishes.

    Use as a context manager: leaving the block without committing removes the stage.
    """

    def __init__(self, final: Path):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.stage-"))
        self.committed = False

    @property
    def library(self) -> Path:
        """The staged ``model.so``."""
        return self.path / LIBRARY_FILE

    @property
    def manifest(self) -> Path:
        """The staged ``manifest.json``."""
        return self.path / MANIFEST_FILE

    def commit(self) -> Path:
        """Replace ``final`` with the staged folder (two renames) and return ``final``.

        Sub-folders of the old ``final`` are other artifacts (the ``<model>/<target>/<scheme>``
        variants under a float32 artifact): they move into the new folder, after the swap, so
        an interruption leaves them in the ``.old-`` folder rather than deleting them.
        """
        old = None
        if self.final.exists():
            old = self.final.parent / f".{self.final.name}.old-{os.getpid()}"
            os.replace(self.final, old)
        os.replace(self.path, self.final)
        self.committed = True
        if old is not None:
            for child in old.iterdir():
                if child.is_dir() and not (self.final / child.name).exists():
                    os.replace(child, self.final / child.name)
            shutil.rmtree(old, ignore_errors=True)
        return self.final

    def __enter__(self) -> StagedArtifact:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)


def package_version(name: str) -> str | None:
    """Return an installed distribution's version, or None."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def build_manifest(*, model_name: str, onnx_path: Path, onnx_sha256: str, opset: int,
                   inputs: list[TensorSpec], outputs: list[TensorSpec], target_name: str,
                   target: dict, device: str, library: Path, library_arch: str,
                   device_code: dict | None, pipeline: dict, quantization: dict, tuning: dict,
                   verification: dict) -> dict[str, Any]:
    """Assemble a manifest (``runner.manifest.SCHEMA_VERSION``) for a built library.

    Parameters
    ----------
    library : Path
        The exported ``model.so``; its sha256 is recorded.
    device_code : dict, optional
        For CUDA: ``{"format": "cubin"|"fatbin", "arch": [...]}`` of the embedded device code.
    pipeline, quantization, tuning, verification : dict
        Sections as the compile job fills them.
    """
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": model_name, "onnx_file": onnx_path.name, "onnx_sha256": onnx_sha256,
                  "opset": opset},
        "inputs": [s.to_json() for s in inputs],
        "outputs": [s.to_json() for s in outputs],
        "target_name": target_name,
        "target": target,
        "device": device,
        "library": {"file": LIBRARY_FILE, "sha256": sha256_file(library),
                    "size_bytes": library.stat().st_size, "arch": library_arch,
                    "params": "embedded", "device_code": device_code},
        "versions": {"tvm": _tvm.TVM_VERSION, "tvm_ffi": _tvm.TVM_FFI_VERSION,
                     "python": platform.python_version(), "onnx": package_version("onnx"),
                     "onnxruntime": package_version("onnxruntime"),
                     "numpy": package_version("numpy")},
        "pipeline": pipeline,
        "quantization": quantization,
        "tuning": tuning,
        "verification": verification,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "created_by": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
    }
