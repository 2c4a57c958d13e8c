"""The project's own Relax passes, one per file, each named after its class."""

from .dump_ir import DumpIR

__all__ = ["DumpIR"]
