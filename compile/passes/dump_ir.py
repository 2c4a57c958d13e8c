"""DumpIR: write the module's TVMScript to a folder between pipeline phases (debugging aid)."""

from __future__ import annotations

from pathlib import Path

import tvm


@tvm.transform.module_pass(opt_level=0, name="DumpIR")
class DumpIR:
    """Write ``<folder>/<index>_<name>.py`` with the module's TVMScript; inert without a folder.

    Parameters
    ----------
    folder : str or Path or None
        Where to write; ``None`` makes the pass a no-op (the default in every pipeline).
    index : int
        Position of the dump in the pipeline, to keep files in order.
    name : str
        The phase just finished, e.g. ``"fused"``.
    """

    def __init__(self, folder: str | Path | None, index: int, name: str):
        self.folder = Path(folder) if folder else None
        self.index = index
        self.name = name

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        """Write the dump and return the module unchanged."""
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{self.index:02d}_{self.name}.py").write_text(mod.script())
        return mod
