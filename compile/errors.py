"""Errors of the compiler side. Each is expected: the jobs print it as one line, exit code 2.

Messages name the bad value, the valid choices and the config key or package that fixes it.
"""


class PipelineError(Exception):
    """Base class of the compiler side's expected errors."""


class ConfigError(PipelineError):
    """A configuration value is invalid (unknown name, out of range, inconsistent fields)."""


class ModelFetchError(PipelineError):
    """A zoo model could not be fetched or failed its sha256 check."""


class UnsupportedModelError(PipelineError):
    """The ONNX file is unreadable, invalid, or uses operators TVM cannot import."""


class ToolchainError(PipelineError):
    """A compiler the target needs (cross gcc, nvcc) is missing or failed."""


class BuildError(PipelineError):
    """The build produced something other than what the target asks (e.g. no CUDA device code)."""


class TuningDatabaseError(PipelineError):
    """A tuning database is unreadable or belongs to another model, target, pipeline or TVM."""


class VerificationError(PipelineError):
    """Compiled outputs differ from ONNX Runtime's beyond the configured tolerance."""


class QuantizationError(PipelineError):
    """Quantization cannot proceed (calibration data) or failed its accuracy gate."""
