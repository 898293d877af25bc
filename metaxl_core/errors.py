"""The project's own error types: every bad input ends in one of these, with a message naming
the file, line, field, flag or name at fault."""


class MetaXLError(Exception):
    """Base class for errors caused by bad input (config, data, encoder name, sweep file)."""


class ConfigError(MetaXLError):
    """A trial or sweep configuration is invalid."""


class DataError(MetaXLError):
    """A dataset is missing, malformed or too small for the request."""


class EncoderError(MetaXLError):
    """An encoder name cannot be resolved or loaded."""


class TrainingError(MetaXLError):
    """Training cannot continue (for example a non-finite loss)."""
