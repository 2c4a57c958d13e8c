"""Errors raised by the runner: an artifact that cannot be trusted, or inputs that do not fit it."""


class RunnerError(Exception):
    """Base class of the runner's expected errors (reported as one line, exit code 2)."""


class ArtifactError(RunnerError):
    """The artifact folder is missing, tampered with, of another schema, or for another machine."""


class InputMismatchError(RunnerError):
    """Inputs given to a model do not match its manifest (names, shapes or dtypes)."""
