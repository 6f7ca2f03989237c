"""Errors with actionable one-line messages; the CLI prints ``str(err)`` and exits non-zero."""


class DepthcutError(Exception):
    """Base class of every error depthcut raises on purpose."""


class ConfigError(DepthcutError, ValueError):
    """A configuration value is out of range or inconsistent."""


class BudgetError(ConfigError):
    """The parameter budget cannot be met (e.g. with the protected layers)."""


class ModelLoadError(DepthcutError):
    """A model path or name could not be loaded as a supported model."""


class UnsupportedModelError(DepthcutError):
    """The model contains a structure depthcut cannot handle; the message names the module."""


class CalibrationError(DepthcutError):
    """Calibration or evaluation data is missing or empty."""


class OutputExistsError(DepthcutError):
    """The output directory exists and overwrite was not requested."""


class OutputWriteError(DepthcutError):
    """The output could not be written (read-only or full disk); nothing partial was kept."""
