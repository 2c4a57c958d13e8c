"""The artifact manifest: what a compiled model is, and the checks that it is intact.

An artifact folder holds ``model.so`` (the compiled Relax VM executable, weights embedded) and
``manifest.json``. The compiler writes the manifest (``compile.artifact``); the runner reads it
with this module alone, so it needs neither the compiler nor ONNX.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ArtifactError

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
LIBRARY_FILE = "model.so"

#: Keys every manifest of this schema has (``compile.artifact.build_manifest`` writes them).
REQUIRED_KEYS = (
    "schema_version",
    "model",
    "inputs",
    "outputs",
    "target",
    "device",
    "library",
    "versions",
    "pipeline",
    "quantization",
    "tuning",
    "verification",
    "created_at",
)

#: ELF ``e_machine`` values of the architectures artifacts are built for.
ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output.

    Parameters
    ----------
    name : str
        Tensor name as in the source ONNX graph.
    shape : tuple of int
        Static shape, e.g. ``(1, 3, 640, 640)`` for NCHW images.
    dtype : str
        NumPy dtype name, e.g. ``"float32"``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> TensorSpec:
        """Build from a manifest entry ``{"name", "shape", "dtype"}``."""
        return cls(str(entry["name"]), tuple(int(d) for d in entry["shape"]), str(entry["dtype"]))

    def to_json(self) -> dict[str, Any]:
        """Return the manifest entry ``{"name", "shape", "dtype"}``."""
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def elf_machine(path: str | Path) -> str:
    """Return the architecture of an ELF shared object, from its header.

    Parameters
    ----------
    path : str or Path
        The shared object.

    Returns
    -------
    str
        ``"x86_64"``, ``"aarch64"`` or ``"elf-machine-<n>"`` for another ``e_machine``.

    Raises
    ------
    ArtifactError
        If the file is not a 64-bit little-endian ELF shared object.
    """
    with open(path, "rb") as handle:
        header = handle.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        raise ArtifactError(f"{path} is not an ELF file")
    if header[4] != 2 or header[5] != 1:
        raise ArtifactError(f"{path} is not a 64-bit little-endian ELF file")
    e_type = int.from_bytes(header[16:18], "little")
    if e_type != 3:  # ET_DYN
        raise ArtifactError(f"{path} is not a shared object (ELF type {e_type})")
    machine = int.from_bytes(header[18:20], "little")
    return ELF_MACHINES.get(machine, f"elf-machine-{machine}")


def read_manifest(artifact_dir: str | Path, check_library: bool = True) -> dict[str, Any]:
    """Read and check an artifact's manifest.

    Parameters
    ----------
    artifact_dir : str or Path
        Folder holding ``manifest.json`` and ``model.so``.
    check_library : bool
        Also check that ``model.so`` exists and its sha256 matches the manifest.

    Returns
    -------
    dict
        The manifest as JSON data.

    Raises
    ------
    ArtifactError
        Missing folder or files, unreadable JSON, another schema version, missing keys, or a
        library whose sha256 differs from the manifest's (the file was changed after the build).
    """
    folder = Path(artifact_dir)
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise ArtifactError(f"artifact folder {folder} does not exist; "
                            "build it with python -m compile")
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {MANIFEST_FILE}; it is not an artifact folder")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); rebuild the artifact") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} is not a JSON object; rebuild the artifact")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{path} has schema_version {version!r}, this runner reads {SCHEMA_VERSION}; "
            "rebuild the artifact with this version of the compiler"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{path} lacks {', '.join(missing)}; rebuild the artifact")
    if check_library:
        library = folder / manifest["library"]["file"]
        if not library.is_file():
            raise ArtifactError(f"{folder} has no {library.name}; rebuild the artifact")
        actual = sha256_file(library)
        expected = manifest["library"]["sha256"]
        if actual != expected:
            raise ArtifactError(
                f"{library} sha256 {actual[:12]}… does not match the manifest's {expected[:12]}…: "
                "the library was changed after the build; rebuild the artifact"
            )
    return manifest
