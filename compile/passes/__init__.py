"""The project's own Relax passes, one per file, each named after its class."""

from .dump_ir import DumpIR
from .lower_qdq_to_integer import LowerQDQToInteger

__all__ = ["DumpIR", "LowerQDQToInteger"]
